package operator_test

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/operator"
	"wasme.io/wasme/internal/testing/registry"
	"wasme.io/wasme/internal/testing/wasmbuild"
	"wasme.io/wasme/pkg/wasmimage"
)

const currentIstiod = "registry.example.com/istio/pilot:1.24.2"

func newFD(ns, name, image string, mutate ...func(*wasmev1.FilterDeployment)) *wasmev1.FilterDeployment {
	fd := &wasmev1.FilterDeployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: wasmev1.FilterDeploymentSpec{
			Filter:     wasmev1.FilterSpec{Image: image},
			Deployment: wasmev1.DeploymentSpec{Istio: wasmev1.IstioDeploymentSpec{Kind: "Deployment"}},
		},
	}
	for _, m := range mutate {
		m(fd)
	}
	return fd
}

func selecting(labels map[string]wasmev1.LabelValue) func(*wasmev1.FilterDeployment) {
	return func(fd *wasmev1.FilterDeployment) { fd.Spec.Deployment.Istio.Labels = labels }
}

// waitReady waits for Ready and reports every node as holding the module first.
func (cl *cluster) waitReady(fd *wasmev1.FilterDeployment) *wasmev1.FilterDeployment {
	cl.t.Helper()
	cl.eventually("the module digest", func() (bool, string) {
		got := cl.fd(fd.Namespace, fd.Name)
		return got.Status.ModuleDigest != "", fmt.Sprintf("%+v", got.Status)
	})
	cl.reportNode("node-1", cl.neededDigests()...)
	var got *wasmev1.FilterDeployment
	cl.eventually("Ready", func() (bool, string) { got = cl.fd(fd.Namespace, fd.Name); return ready(got) })
	return got
}

// neededDigests are the modules of every FilterDeployment, as a node cache would hold them.
func (cl *cluster) neededDigests() []string {
	var l wasmev1.FilterDeploymentList
	if err := cl.c.List(cl.ctx, &l); err != nil {
		cl.t.Fatal(err)
	}
	seen := map[string]bool{}
	var out []string
	for _, fd := range l.Items {
		if d := fd.Status.ModuleDigest; d != "" && !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	return out
}

func (cl *cluster) waitGone(fd *wasmev1.FilterDeployment) {
	cl.t.Helper()
	if err := cl.c.Delete(cl.ctx, fd); err != nil {
		cl.t.Fatal(err)
	}
	cl.eventually("deletion", func() (bool, string) {
		err := cl.c.Get(cl.ctx, client.ObjectKeyFromObject(fd), &wasmev1.FilterDeployment{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
}

// A current istiod gets plain typed_config with current filter names; workloads are selected by
// their own labels or their pod template's; one created later is picked up; one relabelled out
// loses its EnvoyFilter and wasme's annotations.
func TestSelectionFollowsWorkloads(t *testing.T) {
	cl := setup(t, currentIstiod)
	ref := cl.push("filters/custom-header:v1", customHeader(t))
	ns := env.Namespace(t)
	byMeta := deployment(ns, "by-meta", map[string]string{"app": "a"}, nil)
	byMeta.Labels = map[string]string{"team": "x"}
	cl.apply(byMeta)
	byTemplate := deployment(ns, "by-template", map[string]string{"app": "b", "team": "x"}, nil)
	byTemplate.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "b"}}
	cl.apply(byTemplate)
	cl.apply(deployment(ns, "other", map[string]string{"app": "c"}, nil))

	fd := newFD(ns, "f", ref, selecting(map[string]wasmev1.LabelValue{"team": "x"}))
	cl.apply(fd)
	fd = cl.waitReady(fd)
	if fd.Status.WorkloadsReady != "2/2" || fd.Status.IstioVersion != "1.24" {
		t.Errorf("status = %+v", fd.Status)
	}
	efs := cl.envoyFilters(ns)
	ef := efs["by-meta-f."+ns]
	if len(efs) != 2 || ef == nil || efs["by-template-f."+ns] == nil {
		t.Fatalf("EnvoyFilters = %v", keys(efs))
	}
	spec := specJSON(t, ef)
	for _, want := range []string{`"typed_config"`, "envoy.filters.network.http_connection_manager", "envoy.filters.http.router", `"app":"a"`} {
		if !strings.Contains(spec, want) {
			t.Errorf("EnvoyFilter spec lacks %s: %s", want, spec)
		}
	}

	// Created later: picked up by the watch.
	late := deployment(ns, "late", map[string]string{"app": "d", "team": "x"}, nil)
	cl.apply(late)
	cl.eventually("the late workload", func() (bool, string) {
		got := cl.fd(ns, "f")
		return got.Status.Workloads["late"].State == wasmev1.WorkloadSucceeded && cl.envoyFilters(ns)["late-f."+ns] != nil, fmt.Sprint(got.Status.Workloads)
	})

	// Relabelled out: EnvoyFilter gone, annotations restored (none).
	d := cl.deployment(ns, "by-template")
	d.Spec.Template.Labels["team"] = "y"
	if err := cl.c.Update(cl.ctx, d); err != nil {
		t.Fatal(err)
	}
	cl.eventually("the relabelled workload to be released", func() (bool, string) {
		d := cl.deployment(ns, "by-template")
		_, hasEF := cl.envoyFilters(ns)["by-template-f."+ns]
		_, inStatus := cl.fd(ns, "f").Status.Workloads["by-template"]
		return !hasEF && !inStatus && d.Spec.Template.Annotations[operator.UserVolumeAnnotation] == "" && d.Annotations[operator.OriginalAnnotation] == "",
			fmt.Sprintf("EnvoyFilter %v, in status %v, annotations %v", hasEF, inStatus, d.Spec.Template.Annotations)
	})
	if a := cl.deployment(ns, "other").Spec.Template.Annotations; len(a) != 0 {
		t.Errorf("an unselected workload was annotated: %v", a)
	}
}

// The user's own sidecar volume annotations are merged with wasme's and restored byte for byte
// when the filter goes; two FilterDeployments on one workload coexist and leave independently.
func TestAnnotationsMergeAndRestore(t *testing.T) {
	cl := setup(t, currentIstiod)
	ref := cl.push("filters/custom-header:v1", customHeader(t))
	ns := env.Namespace(t)
	userVolume := `[ {"name": "certs", "secret": {"secretName": "my-certs"}} ]`
	cl.apply(deployment(ns, "app", map[string]string{"app": "app"}, map[string]string{
		operator.UserVolumeAnnotation: userVolume, "keep": "me",
	}))

	first := newFD(ns, "first", ref)
	cl.apply(first)
	first = cl.waitReady(first)
	second := newFD(ns, "second", ref, func(fd *wasmev1.FilterDeployment) {
		fd.Spec.Filter.Config = &apiextensionsv1.JSON{Raw: []byte(`"{\"name\":\"x-second\",\"value\":\"2\"}"`)}
	})
	cl.apply(second)
	cl.waitReady(second)

	d := cl.deployment(ns, "app")
	a := d.Spec.Template.Annotations
	wantVolume := `[{"name":"certs","secret":{"secretName":"my-certs"}},{"name":"cache-dir","hostPath":{"path":"/var/local/lib/wasme-cache"}}]`
	if a[operator.UserVolumeAnnotation] != wantVolume || a[operator.UserVolumeMountAnnotation] != operator.UserVolumeMount || a["keep"] != "me" {
		t.Errorf("merged annotations: %v", a)
	}
	if d.Generation != 2 {
		t.Errorf("generation %d: two FilterDeployments must roll the pods once", d.Generation)
	}
	if efs := cl.envoyFilters(ns); len(efs) != 2 {
		t.Errorf("EnvoyFilters = %v", keys(efs))
	}

	cl.waitGone(first)
	d = cl.deployment(ns, "app")
	if d.Spec.Template.Annotations[operator.UserVolumeAnnotation] != wantVolume {
		t.Errorf("removing one of two FilterDeployments changed the annotations: %v", d.Spec.Template.Annotations)
	}
	if efs := cl.envoyFilters(ns); len(efs) != 1 || efs["app-second."+ns] == nil {
		t.Errorf("EnvoyFilters after the first went = %v", keys(efs))
	}

	cl.waitGone(second)
	d = cl.deployment(ns, "app")
	want := map[string]string{operator.UserVolumeAnnotation: userVolume, "keep": "me"}
	if fmt.Sprint(d.Spec.Template.Annotations) != fmt.Sprint(want) || d.Annotations[operator.OriginalAnnotation] != "" {
		t.Errorf("restored annotations = %q, want %q (metadata %v)", d.Spec.Template.Annotations, want, d.Annotations)
	}
}

// Bad input and missing parts stop at the status with a clear reason; nothing is written to
// the workload and no EnvoyFilter appears.
func TestFailuresStopAtStatus(t *testing.T) {
	cl := setup(t, currentIstiod)
	good := cl.push("filters/custom-header:v1", customHeader(t))
	notProxyWasm := cl.reg.Host + "/filters/not-proxy-wasm:v1"
	cl.push("filters/not-proxy-wasm:v1", wasmbuild.TinyModule("_start"))
	cases := []struct {
		name    string
		fd      func(ns string) *wasmev1.FilterDeployment
		reason  string
		message string
	}{
		{"image not found", func(ns string) *wasmev1.FilterDeployment {
			return newFD(ns, "f", cl.reg.Host+"/filters/missing:v1")
		}, wasmev1.ImageFailedReason, "not found"},
		{"not a proxy-wasm module", func(ns string) *wasmev1.FilterDeployment {
			return newFD(ns, "f", notProxyWasm)
		}, wasmev1.ImageFailedReason, "proxy_abi_version"},
		{"filter rejects its config", func(ns string) *wasmev1.FilterDeployment {
			return newFD(ns, "f", good, func(fd *wasmev1.FilterDeployment) {
				fd.Spec.Filter.Config = &apiextensionsv1.JSON{Raw: []byte(`"not json"`)}
			})
		}, wasmev1.ImageFailedReason, "refused"},
		{"unknown root id", func(ns string) *wasmev1.FilterDeployment {
			return newFD(ns, "f", good, func(fd *wasmev1.FilterDeployment) { fd.Spec.Filter.RootID = "nope" })
		}, wasmev1.ImageFailedReason, "nope"},
		{"missing pull secret", func(ns string) *wasmev1.FilterDeployment {
			return newFD(ns, "f", good, func(fd *wasmev1.FilterDeployment) {
				fd.Spec.Filter.ImagePullOptions = &wasmev1.ImagePullOptions{PullSecret: "regcred"}
			})
		}, wasmev1.ImageFailedReason, `pull secret "regcred" not found`},
		{"istiod missing", func(ns string) *wasmev1.FilterDeployment {
			return newFD(ns, "f", good, func(fd *wasmev1.FilterDeployment) { fd.Spec.Deployment.Istio.IstioNamespace = "no-istio" })
		}, wasmev1.IstioNotFoundReason, "no istiod Deployment in namespace no-istio"},
		{"no cache node", func(ns string) *wasmev1.FilterDeployment {
			return newFD(ns, "f", good)
		}, wasmev1.CachePendingReason, "no node cache is ready"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ns := env.Namespace(t)
			cl.apply(deployment(ns, "app", map[string]string{"app": "app"}, nil))
			fd := tc.fd(ns)
			cl.apply(fd)
			var cond *metav1.Condition
			cl.eventually(tc.reason, func() (bool, string) {
				got := cl.fd(ns, "f")
				cond = apimeta.FindStatusCondition(got.Status.Conditions, wasmev1.ReadyCondition)
				return cond != nil && cond.Reason == tc.reason && strings.Contains(cond.Message, tc.message) && got.Status.Reason == cond.Message,
					fmt.Sprintf("%+v", got.Status)
			})
			if cond.Status != metav1.ConditionFalse {
				t.Errorf("Ready = %s", cond.Status)
			}
			if efs := cl.envoyFilters(ns); len(efs) != 0 {
				t.Errorf("EnvoyFilters written: %v", keys(efs))
			}
			if a := cl.deployment(ns, "app").Spec.Template.Annotations; len(a) != 0 {
				t.Errorf("workload annotated: %v", a)
			}
		})
	}
}

// Nothing selected is a state the status names, not an error.
func TestNothingSelected(t *testing.T) {
	cl := setup(t, currentIstiod)
	ref := cl.push("filters/custom-header:v1", customHeader(t))
	ns := env.Namespace(t)
	cl.apply(deployment(ns, "app", map[string]string{"app": "app"}, nil))
	fd := newFD(ns, "f", ref, func(fd *wasmev1.FilterDeployment) { fd.Spec.Deployment.Istio.Kind = "statefulset" })
	cl.apply(fd)
	cl.eventually("the module digest", func() (bool, string) {
		got := cl.fd(ns, "f")
		return got.Status.ModuleDigest != "", fmt.Sprintf("%+v", got.Status)
	})
	cl.reportNode("node-1", cl.neededDigests()...)
	cl.eventually("NoWorkloads", func() (bool, string) {
		got := cl.fd(ns, "f")
		c := apimeta.FindStatusCondition(got.Status.Conditions, wasmev1.ReadyCondition)
		return c != nil && c.Reason == wasmev1.NoWorkloadsReason && strings.Contains(c.Message, "no StatefulSet in namespace "+ns) && got.Status.WorkloadsReady == "0/0",
			fmt.Sprintf("%+v", got.Status)
	})
	// A matching StatefulSet appears: the watch picks it up (StatefulSet RBAC included).
	ss := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "db"}, Spec: appsv1.StatefulSetSpec{
		Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
		Template: deployment(ns, "x", map[string]string{"app": "db"}, nil).Spec.Template,
	}}
	cl.apply(ss)
	cl.eventually("the StatefulSet", func() (bool, string) {
		got := cl.fd(ns, "f")
		ok, msg := ready(got)
		return ok && got.Status.Workloads["db"].State == wasmev1.WorkloadSucceeded, msg
	})
}

// A tag pushed again with a new module rolls out without touching the FilterDeployment.
func TestRepushedTagRollsOut(t *testing.T) {
	cl := setupWith(t, setupOptions{istiod: currentIstiod, resolveInterval: time.Second})
	ref := cl.push("filters/custom-header:v1", customHeader(t))
	ns := env.Namespace(t)
	cl.apply(deployment(ns, "app", map[string]string{"app": "app"}, nil))
	fd := cl.waitReady(func() *wasmev1.FilterDeployment { f := newFD(ns, "f", ref); cl.apply(f); return f }())
	old := fd.Status.ModuleDigest

	// Same filter, other bytes: a custom section changes the digest, not the behaviour.
	changed := append(append([]byte{}, customHeader(t)...), 0, 5, 3, 'w', 'a', 'x', 1)
	cl.push("filters/custom-header:v1", changed)
	cl.eventually("the new digest", func() (bool, string) {
		got := cl.fd(ns, "f")
		return got.Status.ModuleDigest != old, fmt.Sprintf("%+v", got.Status)
	})
	// Until the nodes hold the new module, the EnvoyFilter keeps loading the old one, and the
	// status names both so node caches keep both.
	got := cl.fd(ns, "f")
	if got.Status.DeployedModuleDigest != old {
		t.Errorf("deployedModuleDigest = %s while the new module is not cached, want %s", got.Status.DeployedModuleDigest, old)
	}
	if ef := cl.envoyFilters(ns)["app-f."+ns]; ef == nil || !strings.Contains(specJSON(t, ef), strings.TrimPrefix(old, "sha256:")) {
		t.Errorf("EnvoyFilter switched before the new module was cached")
	}
	fd = cl.waitReady(fd)
	ef := cl.envoyFilters(ns)["app-f."+ns]
	if ef == nil || !strings.Contains(specJSON(t, ef), strings.TrimPrefix(fd.Status.ModuleDigest, "sha256:")) {
		t.Errorf("EnvoyFilter does not load the new module %s", fd.Status.ModuleDigest)
	}
	if fd.Status.DeployedModuleDigest != fd.Status.ModuleDigest {
		t.Errorf("deployedModuleDigest = %s after the rollout, want %s", fd.Status.DeployedModuleDigest, fd.Status.ModuleDigest)
	}
}

// A registry that fails (503) leaves the FilterDeployment waiting with the reason; once it
// answers again the rollout completes by itself.
func TestRegistryDownRecovers(t *testing.T) {
	cl := setup(t, currentIstiod)
	plain := registry.StartT(t, registry.Options{})
	proxy := registry.NewProxy(t, plain)
	if _, err := wasmimage.Push(cl.ctx, plain.Host+"/filters/custom-header:v1", customHeader(t),
		wasmimage.RuntimeConfig{RootIDs: []string{"add_header"}}, wasmimage.WithPlainHTTP(true)); err != nil {
		t.Fatal(err)
	}
	proxy.SetFault(func(w http.ResponseWriter, _ *http.Request) bool {
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
		return true
	})
	ns := env.Namespace(t)
	cl.apply(deployment(ns, "app", map[string]string{"app": "app"}, nil))
	fd := newFD(ns, "f", proxy.Host+"/filters/custom-header:v1", func(fd *wasmev1.FilterDeployment) {
		fd.Spec.Filter.ImagePullOptions = &wasmev1.ImagePullOptions{PlainHTTP: true}
	})
	cl.apply(fd)
	cl.eventually("ImageFailed", func() (bool, string) {
		got := cl.fd(ns, "f")
		c := apimeta.FindStatusCondition(got.Status.Conditions, wasmev1.ReadyCondition)
		return c != nil && c.Reason == wasmev1.ImageFailedReason && apimeta.IsStatusConditionTrue(got.Status.Conditions, wasmev1.ReconcilingCondition),
			fmt.Sprintf("%+v", got.Status)
	})
	if efs := cl.envoyFilters(ns); len(efs) != 0 {
		t.Errorf("EnvoyFilters while the registry is down: %v", keys(efs))
	}
	proxy.SetFault(nil)
	cl.waitReady(fd)
}

// The operator killed at random points of a rollout, 20 times, then left to run: one
// EnvoyFilter per workload, none orphaned, one pod-template change per workload.
func TestRestartsConverge(t *testing.T) {
	cl := setupWith(t, setupOptions{istiod: currentIstiod, noOperator: true})
	ref := cl.push("filters/custom-header:v1", customHeader(t))
	ns := env.Namespace(t)
	for i := range 3 {
		cl.apply(deployment(ns, fmt.Sprintf("app-%d", i), map[string]string{"app": fmt.Sprint(i)}, nil))
	}
	cl.apply(newFD(ns, "f", ref))
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		stop := cl.startOperator(cl.ctx, time.Hour, registryOptions(cl.reg)...)
		time.Sleep(time.Duration(rng.IntN(1000)) * time.Millisecond)
		stop()
		if d := cl.fd(ns, "f").Status.ModuleDigest; d != "" {
			cl.reportNode("node-1", d)
		}
	}
	t.Cleanup(cl.startOperator(cl.ctx, time.Hour, registryOptions(cl.reg)...))
	t.Cleanup(cl.deleteFilterDeployments)
	fd := cl.waitReady(cl.fd(ns, "f"))
	if fd.Status.WorkloadsReady != "3/3" {
		t.Errorf("workloads %s", fd.Status.WorkloadsReady)
	}
	efs := cl.envoyFilters(ns)
	if len(efs) != 3 {
		t.Errorf("EnvoyFilters = %v", keys(efs))
	}
	for _, ef := range efs {
		if !metav1.IsControlledBy(ef, fd) {
			t.Errorf("%s is not controlled by the FilterDeployment", ef.Name)
		}
	}
	for i := range 3 {
		if g := cl.deployment(ns, fmt.Sprintf("app-%d", i)).Generation; g != 2 {
			t.Errorf("app-%d: generation %d, want 2 (one rollout)", i, g)
		}
	}
}

// Two FilterDeployments claiming one filter id on one workload: the second is told why it
// cannot have the EnvoyFilter, and the first keeps it.
func TestSameIDConflict(t *testing.T) {
	cl := setup(t, currentIstiod)
	ref := cl.push("filters/custom-header:v1", customHeader(t))
	ns := env.Namespace(t)
	cl.apply(deployment(ns, "app", map[string]string{"app": "app"}, nil))
	sameID := func(fd *wasmev1.FilterDeployment) { fd.Spec.Filter.ID = "same" }
	first := newFD(ns, "first", ref, sameID)
	cl.apply(first)
	first = cl.waitReady(first)
	cl.apply(newFD(ns, "second", ref, sameID))
	cl.eventually("the conflict", func() (bool, string) {
		got := cl.fd(ns, "second")
		w := got.Status.Workloads["app"]
		return w.State == wasmev1.WorkloadFailed && strings.Contains(w.Reason, "EnvoyFilter app-same exists and is not this FilterDeployment's"),
			fmt.Sprintf("%+v", got.Status)
	})
	ef := cl.envoyFilters(ns)["app-same"]
	if ef == nil || !metav1.IsControlledBy(ef, first) {
		t.Errorf("the first FilterDeployment lost its EnvoyFilter: %v", ef)
	}
}
