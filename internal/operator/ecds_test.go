package operator_test

import (
	"fmt"
	"strings"
	"testing"

	apinetworking "istio.io/api/networking/v1alpha3"
	"sigs.k8s.io/controller-runtime/pkg/client"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/istio"
	"wasme.io/wasme/internal/operator"
)

func ecds(fd *wasmev1.FilterDeployment) { fd.Spec.Delivery = wasmev1.DeliveryECDS }

// wantECDS is the EnvoyFilter spec an ECDS FilterDeployment with id and no config writes for a
// workload whose pod template has labels.
func wantECDS(t *testing.T, fd *wasmev1.FilterDeployment, labels map[string]string) string {
	t.Helper()
	sha := strings.TrimPrefix(fd.Status.ModuleDigest, "sha256:")
	// The only FilterDeployment of its namespace.
	key := istio.ChainKey{Phase: wasmev1.PhaseUnspecified, Name: fd.Name}
	prio := istio.ChainPriority(key, []istio.ChainKey{key})
	want, err := istio.BuildECDSEnvoyFilter(istio.Filter{
		WorkloadLabels: labels, ID: fd.FilterID(), RootID: "add_header", ModuleSHA256: sha,
		Context: "SIDECAR_INBOUND", Shape: istio.TypedShape, Priority: &prio,
		ModuleURL: "http://wasme-cache.wasme.svc:9979/sha256/" + sha,
	})
	if err != nil {
		t.Fatal(err)
	}
	return specJSON(t, want)
}

// In ECDS delivery the operator writes an extension config and a listener patch naming it, and
// touches no workload: no annotation, no label, no pod roll.
func TestECDSPatchesNoWorkload(t *testing.T) {
	cl := setup(t, currentIstiod)
	ref := cl.push("filters/custom-header:v1", customHeader(t))
	ns := env.Namespace(t)
	labels := map[string]string{"app": "app"}
	cl.apply(deployment(ns, "app", labels, map[string]string{"keep": "me"}))

	fd := newFD(ns, "f", ref, ecds)
	cl.apply(fd)
	fd = cl.waitReady(fd)
	if fd.Status.Delivery != wasmev1.DeliveryECDS || fd.Status.DeliveryMessage == "" {
		t.Errorf("status.delivery = %q (%q), want ecds", fd.Status.Delivery, fd.Status.DeliveryMessage)
	}
	efs := cl.envoyFilters(ns)
	ef := efs["app-f."+ns]
	if len(efs) != 1 || ef == nil {
		t.Fatalf("EnvoyFilters = %v", keys(efs))
	}
	if got := len(ef.Spec.ConfigPatches); got != 2 ||
		ef.Spec.ConfigPatches[0].ApplyTo != apinetworking.EnvoyFilter_EXTENSION_CONFIG ||
		ef.Spec.ConfigPatches[1].ApplyTo != apinetworking.EnvoyFilter_HTTP_FILTER {
		t.Fatalf("patches: %s", specJSON(t, ef))
	}
	if got, want := specJSON(t, ef), wantECDS(t, fd, labels); got != want {
		t.Errorf("spec:\n got %s\nwant %s", got, want)
	}
	d := cl.deployment(ns, "app")
	if d.Generation != 1 || fmt.Sprint(d.Spec.Template.Annotations) != "map[keep:me]" ||
		d.Annotations[operator.OriginalAnnotation] != "" || d.Spec.Template.Labels[operator.CacheMountedLabel] != "" {
		t.Errorf("workload touched: generation %d, template %v %v, metadata %v",
			d.Generation, d.Spec.Template.Annotations, d.Spec.Template.Labels, d.Annotations)
	}

	cl.waitGone(fd)
	if efs := cl.envoyFilters(ns); len(efs) != 0 {
		t.Errorf("EnvoyFilters after deletion = %v", keys(efs))
	}
}

// Switching a mounted FilterDeployment to ECDS turns its EnvoyFilter into the ECDS one, then
// removes the mount: the pods roll once more, and their new template has no annotation.
func TestSwitchMountToECDS(t *testing.T) {
	cl := setup(t, currentIstiod)
	ref := cl.push("filters/custom-header:v1", customHeader(t))
	ns := env.Namespace(t)
	labels := map[string]string{"app": "app"}
	cl.apply(deployment(ns, "app", labels, nil))

	fd := newFD(ns, "f", ref)
	cl.apply(fd)
	fd = cl.waitReady(fd)
	if d := cl.deployment(ns, "app"); fd.Status.Delivery != wasmev1.DeliveryMount || d.Generation != 2 ||
		d.Spec.Template.Annotations[operator.UserVolumeAnnotation] == "" {
		t.Fatalf("mount: delivery %q, generation %d, annotations %v", fd.Status.Delivery, d.Generation, d.Spec.Template.Annotations)
	}

	patch := client.MergeFrom(fd.DeepCopy())
	fd.Spec.Delivery = wasmev1.DeliveryECDS
	if err := cl.c.Patch(cl.ctx, fd, patch); err != nil {
		t.Fatal(err)
	}
	cl.eventually("ECDS Ready, mount gone", func() (bool, string) {
		fd = cl.fd(ns, "f")
		d := cl.deployment(ns, "app")
		ok, msg := ready(fd)
		return ok && fd.Status.ObservedGeneration == fd.Generation && fd.Status.Delivery == wasmev1.DeliveryECDS &&
				len(d.Spec.Template.Annotations) == 0 && d.Annotations[operator.OriginalAnnotation] == "",
			fmt.Sprintf("%s; delivery %q; template %v; metadata %v", msg, fd.Status.Delivery, d.Spec.Template.Annotations, d.Annotations)
	})
	ef := cl.envoyFilters(ns)["app-f."+ns]
	if ef == nil {
		t.Fatal("no EnvoyFilter")
	}
	if got, want := specJSON(t, ef), wantECDS(t, fd, labels); got != want {
		t.Errorf("spec:\n got %s\nwant %s", got, want)
	}
	if d := cl.deployment(ns, "app"); d.Generation != 3 || d.Spec.Template.Labels[operator.CacheMountedLabel] != "" {
		t.Errorf("generation %d (want 3: one roll in, one out), template labels %v", d.Generation, d.Spec.Template.Labels)
	}
}

// Asking for ECDS on an Istio whose agent cannot fetch modules stalls with the reason and
// writes nothing.
func TestECDSOnOldIstioStalls(t *testing.T) {
	cl := setup(t, "registry.example.com/istio/pilot:1.5.6")
	ref := cl.push("filters/custom-header:v1", customHeader(t))
	ns := env.Namespace(t)
	cl.apply(deployment(ns, "app", map[string]string{"app": "app"}, nil))
	cl.apply(newFD(ns, "f", ref, ecds))
	cl.eventually("Stalled", func() (bool, string) {
		fd := cl.fd(ns, "f")
		for _, c := range fd.Status.Conditions {
			if c.Type == wasmev1.StalledCondition && c.Reason == wasmev1.InvalidSpecReason && strings.Contains(c.Message, "needs Istio 1.12 or later") {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%+v", fd.Status.Conditions)
	})
	if efs := cl.envoyFilters(ns); len(efs) != 0 {
		t.Errorf("EnvoyFilters = %v", keys(efs))
	}
	if d := cl.deployment(ns, "app"); d.Generation != 1 {
		t.Errorf("workload generation %d, want 1", d.Generation)
	}
}
