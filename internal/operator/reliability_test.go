package operator_test

import (
	"fmt"
	"strings"
	"testing"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	kstatus "sigs.k8s.io/cli-utils/pkg/kstatus/status"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/operator"
)

// The last selected workload relabelled away is released at once, also while the image fails
// (a release does not wait for the image or the node caches), and the FilterDeployment says it
// selects nothing.
func TestLastWorkloadRelabelledIsReleased(t *testing.T) {
	cl := setup(t, currentIstiod)
	ref := cl.push("filters/custom-header:v1", customHeader(t))
	ns := env.Namespace(t)
	only := deployment(ns, "only", map[string]string{"app": "only", "team": "x"}, nil)
	only.Spec.Selector.MatchLabels = map[string]string{"app": "only"}
	cl.apply(only)
	fd := newFD(ns, "f", ref, selecting(map[string]wasmev1.LabelValue{"team": "x"}))
	cl.apply(fd)
	fd = cl.waitReady(fd)
	d := cl.deployment(ns, "only")
	if d.Spec.Template.Labels[operator.CacheMountedLabel] != "true" {
		t.Fatalf("pod template labels %v lack %s", d.Spec.Template.Labels, operator.CacheMountedLabel)
	}
	if sel := cl.envoyFilters(ns)["only-f."+ns].Spec.WorkloadSelector.Labels; sel[operator.CacheMountedLabel] != "true" || sel["app"] != "only" {
		t.Fatalf("the EnvoyFilter selects %v: pods without the mount would get the filter", sel)
	}

	// The image now fails, and the only workload is relabelled in the same breath.
	fd.Spec.Filter.Image = cl.reg.Host + "/filters/missing:v1"
	if err := cl.c.Update(cl.ctx, fd); err != nil {
		t.Fatal(err)
	}
	d.Spec.Template.Labels["team"] = "y"
	if err := cl.c.Update(cl.ctx, d); err != nil {
		t.Fatal(err)
	}

	cl.eventually("the workload released while the image fails", func() (bool, string) {
		d := cl.deployment(ns, "only")
		_, hasEF := cl.envoyFilters(ns)["only-f."+ns]
		got := cl.fd(ns, "f")
		c := apimeta.FindStatusCondition(got.Status.Conditions, wasmev1.ReadyCondition)
		return !hasEF && d.Annotations[operator.OriginalAnnotation] == "" && d.Spec.Template.Annotations[operator.UserVolumeAnnotation] == "" &&
				d.Spec.Template.Labels[operator.CacheMountedLabel] == "" && c != nil && c.Reason == wasmev1.ImageFailedReason,
			fmt.Sprintf("EnvoyFilter %v, annotations %v, template %v, ready %+v", hasEF, d.Annotations, d.Spec.Template.ObjectMeta, c)
	})

	// Back to a good image: nothing is selected, and status says so without rolling anything.
	fd = cl.fd(ns, "f")
	fd.Spec.Filter.Image = ref
	if err := cl.c.Update(cl.ctx, fd); err != nil {
		t.Fatal(err)
	}
	cl.eventually("NoWorkloads", func() (bool, string) {
		got := cl.fd(ns, "f")
		c := apimeta.FindStatusCondition(got.Status.Conditions, wasmev1.ReadyCondition)
		return c != nil && c.Reason == wasmev1.NoWorkloadsReason && len(got.Status.Workloads) == 0, fmt.Sprintf("%+v", got.Status)
	})
}

// Hundreds of failing workloads still give a status the API server accepts: the message names a
// few and counts the rest, each workload keeps its own reason.
func TestManyFailingWorkloads(t *testing.T) {
	cl := setup(t, currentIstiod)
	ref := cl.push("filters/custom-header:v1", customHeader(t))
	ns := env.Namespace(t)
	const n = 300
	// A sidecar annotation that is not a JSON list cannot be merged: each workload fails.
	bad := map[string]string{operator.UserVolumeAnnotation: `{"not": "a list"}`}
	for i := range n {
		cl.apply(deployment(ns, fmt.Sprintf("w-%03d-%s", i, strings.Repeat("x", 40)), map[string]string{"app": "many"}, bad))
	}
	fd := newFD(ns, "f", ref)
	cl.apply(fd)
	cl.eventually("the module digest", func() (bool, string) {
		got := cl.fd(ns, "f")
		return got.Status.ModuleDigest != "", fmt.Sprintf("%+v", got.Status.Conditions)
	})
	cl.reportNode("node-1", cl.neededDigests()...)
	cl.eventually("WorkloadFailed for all of them", func() (bool, string) {
		got := cl.fd(ns, "f")
		c := apimeta.FindStatusCondition(got.Status.Conditions, wasmev1.ReadyCondition)
		failed := 0
		for _, w := range got.Status.Workloads {
			if w.State == wasmev1.WorkloadFailed && strings.Contains(w.Reason, "not a JSON list") {
				failed++
			}
		}
		return c != nil && c.Reason == wasmev1.WorkloadFailedReason && failed == n &&
				strings.Contains(c.Message, fmt.Sprintf("%d of %d workloads", n, n)) && strings.Contains(c.Message, "more"),
			fmt.Sprintf("%d failed, ready %+v", failed, c)
	})
	if efs := cl.envoyFilters(ns); len(efs) != 0 {
		t.Fatalf("%d EnvoyFilters for workloads that could not mount the cache", len(efs))
	}
}

// The conditions follow kstatus: a Ready FilterDeployment is Current, a stalled one Failed, one
// waiting for node caches InProgress.
func TestConditionsAreKstatus(t *testing.T) {
	cl := setup(t, currentIstiod)
	ref := cl.push("filters/custom-header:v1", customHeader(t))
	ns := env.Namespace(t)
	cl.apply(deployment(ns, "w", map[string]string{"app": "w"}, nil))

	compute := func(fd *wasmev1.FilterDeployment) *kstatus.Result {
		t.Helper()
		obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(fd)
		if err != nil {
			t.Fatal(err)
		}
		res, err := kstatus.Compute(&unstructured.Unstructured{Object: obj})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	waitStatus := func(name string, want kstatus.Status) *wasmev1.FilterDeployment {
		t.Helper()
		var got *wasmev1.FilterDeployment
		cl.eventually(fmt.Sprintf("%s to be %s", name, want), func() (bool, string) {
			got = cl.fd(ns, name)
			res := compute(got)
			return res.Status == want, fmt.Sprintf("%s: %s (%+v)", res.Status, res.Message, got.Status.Conditions)
		})
		return got
	}

	// Waiting for the node caches: in progress.
	cl.apply(newFD(ns, "progressing", ref))
	cl.eventually("CachePending", func() (bool, string) {
		got := cl.fd(ns, "progressing")
		c := apimeta.FindStatusCondition(got.Status.Conditions, wasmev1.ReadyCondition)
		return c != nil && c.Reason == wasmev1.CachePendingReason, fmt.Sprintf("%+v", got.Status.Conditions)
	})
	if res := compute(cl.fd(ns, "progressing")); res.Status != kstatus.InProgressStatus {
		t.Fatalf("waiting for caches: kstatus %s (%s)", res.Status, res.Message)
	}
	cl.reportNode("node-1", cl.neededDigests()...)
	got := waitStatus("progressing", kstatus.CurrentStatus)
	if got.Status.ObservedGeneration != got.Generation {
		t.Fatalf("Current at observedGeneration %d of %d", got.Status.ObservedGeneration, got.Generation)
	}

	// A spec that can never work without a change: stalled, which kstatus reads as Failed, and
	// the generation counts as observed.
	cl.apply(newFD(ns, "stalled", ref, func(fd *wasmev1.FilterDeployment) { fd.Spec.Filter.RootID = "no_such_root" }))
	got = waitStatus("stalled", kstatus.FailedStatus)
	if !apimeta.IsStatusConditionTrue(got.Status.Conditions, wasmev1.StalledCondition) || got.Status.ObservedGeneration != got.Generation {
		t.Fatalf("stalled: %+v", got.Status)
	}
}
