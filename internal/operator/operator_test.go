package operator_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	networkingv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/yaml"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/config/samples"
	"wasme.io/wasme/internal/istio"
	"wasme.io/wasme/internal/operator"
	"wasme.io/wasme/internal/testing/registry"
	"wasme.io/wasme/internal/testing/testenv"
	"wasme.io/wasme/internal/testing/tools"
	"wasme.io/wasme/internal/testing/wasmbuild"
	"wasme.io/wasme/internal/validation"
	"wasme.io/wasme/pkg/wasmimage"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, &env))
}

var (
	moduleOnce sync.Once
	module     []byte
)

// customHeader is the seed's filter, built from examples/filters/custom-header.
func customHeader(t *testing.T) []byte {
	moduleOnce.Do(func() { module = wasmbuild.ExampleT(t, "custom-header") })
	if module == nil {
		t.Fatal("custom-header did not build")
	}
	return module
}

// cluster is one test's world: a registry, the install applied, istiod, and a running operator
// with the shipped RBAC.
type cluster struct {
	t   *testing.T
	ctx context.Context
	c   client.Client
	reg *registry.Registry
	// validation bounds the validation children of the operators it starts.
	validation validation.Limits
	// cacheGrace is the operator's node cache heartbeat grace; zero means its default.
	cacheGrace time.Duration
}

func setup(t *testing.T, istiodImage string) *cluster {
	return setupWith(t, setupOptions{istiod: istiodImage, resolveInterval: time.Hour})
}

type setupOptions struct {
	istiod          string
	resolveInterval time.Duration
	// noOperator leaves starting operators to the test.
	noOperator bool
	// validation bounds the operator's validation children.
	validation validation.Limits
	// cacheGrace is the operator's node cache heartbeat grace; zero means its default.
	cacheGrace time.Duration
}

// setupWith starts the world with options.
func setupWith(t *testing.T, o setupOptions) *cluster {
	istiodImage := o.istiod
	t.Helper()
	if o.validation.Timeout == 0 {
		// Not what these tests are about: on a loaded machine, compiling a Go filter alone can
		// take most of the production default of 10 s.
		o.validation.Timeout = time.Minute
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cl := &cluster{t: t, ctx: ctx, c: env.Client, reg: registry.StartT(t, registry.Options{TLS: true}), validation: o.validation, cacheGrace: o.cacheGrace}
	if err := env.ApplyFile(ctx, filepath.Join(tools.RepoRoot(), "deploy", "wasme.yaml")); err != nil {
		t.Fatal(err)
	}
	if istiodImage != "" {
		cl.ensureNamespace("istio-system")
		d := deployment("istio-system", "istiod", map[string]string{"app": "istiod"}, nil)
		d.Spec.Template.Spec.Containers[0].Name = "discovery"
		d.Spec.Template.Spec.Containers[0].Image = istiodImage
		cl.apply(d)
		t.Cleanup(func() { _ = env.Client.Delete(context.Background(), d) })
	}
	if !o.noOperator {
		t.Cleanup(cl.startOperator(ctx, o.resolveInterval, registryOptions(cl.reg)...))
		// Runs first: the operator is still up to finalize this test's FilterDeployments, so
		// none outlives the test (envtest never finishes deleting a namespace).
		t.Cleanup(cl.deleteFilterDeployments)
	}
	return cl
}

// registryOptions reach the test registry: its CA when it serves TLS.
func registryOptions(reg *registry.Registry) []wasmimage.Option {
	if reg.TLS {
		return []wasmimage.Option{wasmimage.WithCAPEM(reg.CAPEM)}
	}
	return nil
}

// startOperator runs an operator as its ServiceAccount until ctx ends or stop is called. It
// may reach the tests' loopback registries, also over plain HTTP (the default policy refuses
// both; egress_test.go shows that).
func (cl *cluster) startOperator(ctx context.Context, resolveInterval time.Duration, imgOpts ...wasmimage.Option) (stop func()) {
	loopback, err := wasmimage.NewEgressPolicy([]string{"127.0.0.1:*"}, nil)
	if err != nil {
		cl.t.Fatal(err)
	}
	return cl.startOperatorWith(ctx, operator.Options{
		ResolveInterval:         resolveInterval,
		Images:                  operator.RegistryImages{Options: imgOpts, Egress: loopback},
		AllowInsecureRegistries: true,
	})
}

// startOperatorWith runs an operator with o (addresses, validation limits, scheme and log
// filled in).
func (cl *cluster) startOperatorWith(ctx context.Context, o operator.Options) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	// The operator's ServiceAccount: the shipped RBAC is what it gets, and a missing
	// permission fails the test.
	cfg, _, err := env.ServiceAccountConfig(ctx, "wasme", "wasme-operator")
	if err != nil {
		cl.t.Fatal(err)
	}
	o.MetricsAddr, o.ProbeAddr, o.ModuleAddr = "0", "0", "127.0.0.1:0"
	o.Validation, o.Scheme, o.SkipNameValidation = cl.validation, env.Scheme, true
	o.CacheHeartbeatGrace = cl.cacheGrace
	o.Log = zap.New(zap.WriteTo(testWriter{cl.t}), zap.UseDevMode(true))
	done := make(chan error, 1)
	go func() { done <- operator.Run(ctx, cfg, o) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			cl.t.Errorf("operator: %v", err)
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func (cl *cluster) ensureNamespace(name string) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := cl.c.Create(cl.ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		cl.t.Fatal(err)
	}
}

func (cl *cluster) apply(o client.Object) {
	cl.t.Helper()
	if err := cl.c.Create(cl.ctx, o); err != nil {
		cl.t.Fatal(err)
	}
}

func deployment(ns, name string, labels, annotations map[string]string) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: annotations},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
			},
		},
	}
}

// push pushes the module to the test registry and returns the reference.
func (cl *cluster) push(repo string, mod []byte) string {
	cl.t.Helper()
	ref := cl.reg.Host + "/" + repo
	if _, err := wasmimage.Push(cl.ctx, ref, mod, wasmimage.RuntimeConfig{RootIDs: []string{"add_header"}},
		wasmimage.WithCAPEM(cl.reg.CAPEM)); err != nil {
		cl.t.Fatal(err)
	}
	return ref
}

// reportNode writes a simulated node's cache report holding the given modules.
func (cl *cluster) reportNode(name string, digests ...string) {
	cl.t.Helper()
	nc := &wasmev1.NodeCache{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := cl.c.Get(cl.ctx, client.ObjectKeyFromObject(nc), nc); apierrors.IsNotFound(err) {
		if err := cl.c.Create(cl.ctx, nc); err != nil {
			cl.t.Fatal(err)
		}
	}
	nc.Status.Conditions = []metav1.Condition{{Type: wasmev1.ReadyCondition, Status: metav1.ConditionTrue, Reason: "Serving", LastTransitionTime: metav1.Now()}}
	// A live report: the operator counts a node cache only while its heartbeat is fresh.
	now := metav1.Now()
	nc.Status.HeartbeatTime = &now
	nc.Status.Modules = nil
	for _, d := range digests {
		nc.Status.Modules = append(nc.Status.Modules, wasmev1.NodeCacheModule{Digest: d, State: wasmev1.ModuleReady, LastTransitionTime: metav1.Now()})
	}
	if err := cl.c.Status().Update(cl.ctx, nc); err != nil {
		cl.t.Fatal(err)
	}
	cl.t.Cleanup(func() { _ = env.Client.Delete(context.Background(), nc) })
}

// eventually polls cond until it holds, failing the test with the last message after a minute.
func (cl *cluster) eventually(what string, cond func() (bool, string)) {
	cl.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			cl.t.Fatalf("timed out waiting for %s: %s", what, msg)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (cl *cluster) fd(ns, name string) *wasmev1.FilterDeployment {
	fd := &wasmev1.FilterDeployment{}
	if err := cl.c.Get(cl.ctx, client.ObjectKey{Namespace: ns, Name: name}, fd); err != nil {
		cl.t.Fatal(err)
	}
	return fd
}

func (cl *cluster) envoyFilters(ns string) map[string]*networkingv1alpha3.EnvoyFilter {
	var l networkingv1alpha3.EnvoyFilterList
	if err := cl.c.List(cl.ctx, &l, client.InNamespace(ns)); err != nil {
		cl.t.Fatal(err)
	}
	out := map[string]*networkingv1alpha3.EnvoyFilter{}
	for _, ef := range l.Items {
		out[ef.Name] = ef
	}
	return out
}

func ready(fd *wasmev1.FilterDeployment) (bool, string) {
	c := apimeta.FindStatusCondition(fd.Status.Conditions, wasmev1.ReadyCondition)
	if c == nil {
		return false, "no Ready condition"
	}
	return c.Status == metav1.ConditionTrue && fd.Status.ObservedGeneration == fd.Generation,
		fmt.Sprintf("Ready=%s %s: %s (observed %d of %d)", c.Status, c.Reason, c.Message, fd.Status.ObservedGeneration, fd.Generation)
}

// The seed walkthrough: the seed's FilterDeployment (registry host aside) on bookinfo's two
// Deployments with Istio 1.5, then a config update, then deletion.
func TestSeedWalkthrough(t *testing.T) {
	cl := setup(t, "registry.example.com/istio/pilot:1.5.6")
	mod := customHeader(t)
	cl.push("ryysud/custom-header:v0.1", mod)
	cl.ensureNamespace("bookinfo")
	for _, name := range []string{"details", "productpage"} {
		cl.apply(deployment("bookinfo", name+"-v1", map[string]string{"app": name, "version": "v1"}, nil))
	}

	fd := &wasmev1.FilterDeployment{}
	if err := yaml.UnmarshalStrict([]byte(samples.BookinfoCustomFilter(cl.reg.Host)), fd); err != nil {
		t.Fatal(err)
	}
	cl.apply(fd)

	// Before any node holds the module, nothing is wired and status says why.
	cl.eventually("the module digest and the cache wait", func() (bool, string) {
		fd = cl.fd("bookinfo", "bookinfo-custom-filter")
		c := apimeta.FindStatusCondition(fd.Status.Conditions, wasmev1.ReadyCondition)
		return c != nil && c.Reason == wasmev1.CachePendingReason && fd.Status.ModuleDigest != "", fmt.Sprintf("%+v", fd.Status)
	})
	if n := len(cl.envoyFilters("bookinfo")); n != 0 {
		t.Fatalf("%d EnvoyFilters before the module was cached", n)
	}
	sum := sha256.Sum256(mod)
	wantDigest := "sha256:" + hex.EncodeToString(sum[:])
	if fd.Status.ModuleDigest != wantDigest {
		t.Fatalf("status.moduleDigest = %s, want %s", fd.Status.ModuleDigest, wantDigest)
	}

	cl.reportNode("node-1", fd.Status.ModuleDigest)
	cl.eventually("Ready", func() (bool, string) { fd = cl.fd("bookinfo", "bookinfo-custom-filter"); return ready(fd) })

	if fd.Status.ObservedGeneration != 1 || fd.Status.RootID != "add_header" || fd.Status.CachedNodes != 1 || fd.Status.IstioVersion != "1.5" {
		t.Errorf("status = %+v", fd.Status)
	}
	if fd.Status.Delivery != wasmev1.DeliveryMount || !strings.Contains(fd.Status.DeliveryMessage, "auto does not pick ECDS") {
		t.Errorf("status.delivery = %q (%q), want mount, picked by auto", fd.Status.Delivery, fd.Status.DeliveryMessage)
	}
	for _, w := range []string{"details-v1", "productpage-v1"} {
		if got := fd.Status.Workloads[w]; got.State != wasmev1.WorkloadSucceeded {
			t.Errorf("workload %s: %+v", w, got)
		}
	}
	efs := cl.envoyFilters("bookinfo")
	if len(efs) != 2 {
		t.Fatalf("EnvoyFilters: %v", keys(efs))
	}
	sha := strings.TrimPrefix(wantDigest, "sha256:")
	for _, w := range []struct{ workload, app string }{{"details-v1", "details"}, {"productpage-v1", "productpage"}} {
		ef := efs[w.workload+"-bookinfo-custom-filter.bookinfo"]
		if ef == nil {
			t.Fatalf("no EnvoyFilter for %s: %v", w.workload, keys(efs))
		}
		if !metav1.IsControlledBy(ef, fd) {
			t.Errorf("%s is not controlled by the FilterDeployment: %v", ef.Name, ef.OwnerReferences)
		}
		want, err := istio.BuildEnvoyFilter(istio.Filter{
			WorkloadLabels: map[string]string{"app": w.app, "version": "v1", operator.CacheMountedLabel: "true"}, ID: "bookinfo-custom-filter.bookinfo",
			RootID: "add_header", ModuleSHA256: sha, Config: wasmev1.FilterConfig{TypeURL: wasmev1.StringValueType},
			Context: "SIDECAR_INBOUND", Shape: istio.LegacyShape,
		})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := specJSON(t, ef), specJSON(t, want); got != want {
			t.Errorf("%s spec:\n got %s\nwant %s", ef.Name, got, want)
		}
	}
	for _, name := range []string{"details-v1", "productpage-v1"} {
		d := cl.deployment("bookinfo", name)
		a := d.Spec.Template.Annotations
		if a[operator.UserVolumeAnnotation] != operator.UserVolume || a[operator.UserVolumeMountAnnotation] != operator.UserVolumeMount {
			t.Errorf("%s template annotations: %v", name, a)
		}
		// The sidecar must not be able to write into the node's module directory.
		if want := `[{"mountPath":"/var/local/lib/wasme-cache","name":"cache-dir","readOnly":true}]`; a[operator.UserVolumeMountAnnotation] != want {
			t.Errorf("%s mount annotation %q, want the read-only %q", name, a[operator.UserVolumeMountAnnotation], want)
		}
		if d.Generation != 2 {
			t.Errorf("%s: generation %d, want 2 (one pod template change)", name, d.Generation)
		}
	}

	// Events only on transitions: the pass loop ran many times, the events say each state once.
	cl.eventually("events", func() (bool, string) {
		var evs eventsv1.EventList
		if err := cl.c.List(cl.ctx, &evs, client.InNamespace("bookinfo")); err != nil {
			return false, err.Error()
		}
		var reasons []string
		for _, e := range evs.Items {
			if e.Regarding.UID == fd.UID {
				reasons = append(reasons, e.Reason)
			}
		}
		slices.Sort(reasons)
		want := []string{wasmev1.CachePendingReason, wasmev1.SucceededReason}
		return slices.Equal(reasons, want), fmt.Sprintf("event reasons %v, want %v", reasons, want)
	})

	// Update the config: EnvoyFilters change, pods do not roll.
	fd.Spec.Filter.Config = &apiextensionsv1.JSON{Raw: []byte(`"{\"name\":\"hello\",\"value\":\"there\"}"`)}
	if err := cl.c.Update(cl.ctx, fd); err != nil {
		t.Fatal(err)
	}
	cl.eventually("the update", func() (bool, string) {
		fd = cl.fd("bookinfo", "bookinfo-custom-filter")
		ok, msg := ready(fd)
		ef := cl.envoyFilters("bookinfo")["details-v1-bookinfo-custom-filter.bookinfo"]
		return ok && fd.Status.ObservedGeneration == 2 && ef != nil && strings.Contains(specJSON(t, ef), "there"), msg
	})
	for _, name := range []string{"details-v1", "productpage-v1"} {
		if g := cl.deployment("bookinfo", name).Generation; g != 2 {
			t.Errorf("%s rolled on a config update: generation %d", name, g)
		}
	}

	// Delete: EnvoyFilters, annotations and the object go.
	if err := cl.c.Delete(cl.ctx, fd); err != nil {
		t.Fatal(err)
	}
	cl.eventually("deletion", func() (bool, string) {
		err := cl.c.Get(cl.ctx, client.ObjectKeyFromObject(fd), &wasmev1.FilterDeployment{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
	if efs := cl.envoyFilters("bookinfo"); len(efs) != 0 {
		t.Errorf("EnvoyFilters left: %v", keys(efs))
	}
	for _, name := range []string{"details-v1", "productpage-v1"} {
		d := cl.deployment("bookinfo", name)
		if len(d.Spec.Template.Annotations) != 0 || d.Annotations[operator.OriginalAnnotation] != "" {
			t.Errorf("%s keeps wasme's annotations: %v %v", name, d.Spec.Template.Annotations, d.Annotations)
		}
	}
}

func (cl *cluster) deleteFilterDeployments() {
	var l wasmev1.FilterDeploymentList
	if err := cl.c.List(cl.ctx, &l); err != nil {
		cl.t.Error(err)
		return
	}
	for i := range l.Items {
		_ = cl.c.Delete(cl.ctx, &l.Items[i])
	}
	cl.eventually("FilterDeployments to be finalized", func() (bool, string) {
		err := cl.c.List(cl.ctx, &l)
		return err == nil && len(l.Items) == 0, fmt.Sprintf("%d left (%v)", len(l.Items), err)
	})
}

func (cl *cluster) deployment(ns, name string) *appsv1.Deployment {
	d := &appsv1.Deployment{}
	if err := cl.c.Get(cl.ctx, client.ObjectKey{Namespace: ns, Name: name}, d); err != nil {
		cl.t.Fatal(err)
	}
	return d
}

func specJSON(t *testing.T, ef *networkingv1alpha3.EnvoyFilter) string {
	b, err := json.Marshal(&ef.Spec)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
