package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	networkingv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/config/samples"
	"wasme.io/wasme/internal/testing/localcluster"
	"wasme.io/wasme/internal/testing/xdsproxy"
	"wasme.io/wasme/pkg/wasmimage"
)

const seedName = "bookinfo-custom-filter"

// push pushes the custom-header module to the local registry under repo:tag.
func push(t *testing.T, repoTag string) string {
	t.Helper()
	ref := cluster.Registry.Host + "/" + repoTag
	if _, err := wasmimage.Push(context.Background(), ref, customHeader(t), wasmimage.RuntimeConfig{RootIDs: []string{"add_header"}},
		wasmimage.WithCAPEM(cluster.Registry.CAPEM)); err != nil {
		t.Fatal(err)
	}
	return ref
}

func applyFD(t *testing.T, fdYAML string) *wasmev1.FilterDeployment {
	t.Helper()
	fd := &wasmev1.FilterDeployment{}
	if err := yaml.UnmarshalStrict([]byte(fdYAML), fd); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Client.Create(context.Background(), fd); err != nil {
		t.Fatal(err)
	}
	// A failed test must not leave its FilterDeployment to the next one.
	t.Cleanup(func() { _ = cluster.Client.Delete(context.Background(), fd) })
	return fd
}

func getFD(t *testing.T, name string) *wasmev1.FilterDeployment {
	t.Helper()
	fd := &wasmev1.FilterDeployment{}
	if err := cluster.Client.Get(context.Background(), client.ObjectKey{Namespace: localcluster.BookinfoNamespace, Name: name}, fd); err != nil {
		t.Fatal(err)
	}
	return fd
}

// eventually polls cond every 100 ms for up to 90 s.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %s", what, msg)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func readyFD(t *testing.T, name string) (bool, string) {
	fd := getFD(t, name)
	c := apimeta.FindStatusCondition(fd.Status.Conditions, wasmev1.ReadyCondition)
	if c == nil {
		return false, "no Ready condition"
	}
	return c.Status == metav1.ConditionTrue && fd.Status.ObservedGeneration == fd.Generation,
		fmt.Sprintf("Ready=%s %s: %s (observed %d of %d)", c.Status, c.Reason, c.Message, fd.Status.ObservedGeneration, fd.Generation)
}

func envoyFilters(t *testing.T) []string {
	t.Helper()
	var l networkingv1alpha3.EnvoyFilterList
	if err := cluster.Client.List(context.Background(), &l, client.InNamespace(localcluster.BookinfoNamespace)); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, ef := range l.Items {
		names = append(names, ef.Name)
	}
	slices.Sort(names)
	return names
}

func wasmNames(c *xdsproxy.Chain) []string {
	var out []string
	for _, w := range c.Wasm {
		out = append(out, w.Name)
	}
	return out
}

// TestSeedWalkthrough is the seed article end to end, through a real istiod: before, no hello
// header; after the seed's FilterDeployment, hello: world!; after a config update, the new
// value, delivered to the same running sidecar; after deletion, no header and no EnvoyFilter.
func TestSeedWalkthrough(t *testing.T) {
	ctx := context.Background()
	p := sidecar(t)
	mod := customHeader(t)
	sum := sha256Hex(mod)
	push(t, "ryysud/custom-header:v0.1")

	if h := get(t, p); h.Get("hello") != "" {
		t.Fatalf("hello header before any FilterDeployment: %q", h.Get("hello"))
	}

	start := time.Now()
	applyFD(t, samples.BookinfoCustomFilter(cluster.Registry.Host))
	c := waitChain(t, p, "the seed filter in the details-v1 sidecar", func(c *xdsproxy.Chain) bool {
		return slices.Contains(wasmNames(c), "bookinfo-custom-filter.bookinfo")
	})
	if got := get(t, p).Get("hello"); got != "world!" {
		t.Fatalf("hello = %q after the FilterDeployment, want world!; chain: %s", got, describe(c))
	}
	t.Logf("FilterDeployment applied -> hello: world! through the sidecar in %s", time.Since(start).Round(time.Millisecond))

	// What istiod delivered is what the seed shows: root id, the module by its sha256 under
	// the node cache path, and the node cache (not the test) put the module there.
	w := c.Wasm[slices.Index(wasmNames(c), "bookinfo-custom-filter.bookinfo")]
	if w.RootID != "add_header" || w.VMID != "bookinfo-custom-filter.bookinfo" || w.Filename != wasmev1.CacheDir+"/"+sum {
		t.Errorf("wasm filter = root %q vm %q file %q; want add_header, bookinfo-custom-filter.bookinfo, %s/%s", w.RootID, w.VMID, w.Filename, wasmev1.CacheDir, sum)
	}
	pod, err := cluster.WaitPod(ctx, localcluster.BookinfoNamespace, "details-v1")
	if err != nil {
		t.Fatal(err)
	}
	if w.Path != filepath.Join(cluster.Node(pod.Spec.NodeName).CacheDir, sum) {
		t.Errorf("module read from %s, want the cache of the pod's node %s", w.Path, pod.Spec.NodeName)
	}
	if i, j := slices.Index(c.HTTPFilters, xdsproxy.WasmFilterName), slices.Index(c.HTTPFilters, "envoy.filters.http.router"); i < 0 || j < 0 || i > j {
		t.Errorf("the Wasm filter is not before the router: %v", c.HTTPFilters)
	}

	eventually(t, "Ready", func() (bool, string) { return readyFD(t, seedName) })
	fd := getFD(t, seedName)
	for _, wl := range []string{"details-v1", "productpage-v1"} {
		if fd.Status.Workloads[wl].State != wasmev1.WorkloadSucceeded {
			t.Errorf("status.workloads[%s] = %+v", wl, fd.Status.Workloads[wl])
		}
	}
	if want := []string{"details-v1-bookinfo-custom-filter.bookinfo", "productpage-v1-bookinfo-custom-filter.bookinfo"}; !slices.Equal(envoyFilters(t), want) {
		t.Errorf("EnvoyFilters %v, want %v", envoyFilters(t), want)
	}
	if fd.Status.ModuleDigest != "sha256:"+sum || int(fd.Status.CachedNodes) != len(cluster.Nodes) {
		t.Errorf("status: moduleDigest %s cachedNodes %d", fd.Status.ModuleDigest, fd.Status.CachedNodes)
	}
	// The harness's kubelet copies the template annotations the operator added to the pod.
	eventually(t, "the sidecar volume annotations on the details-v1 pod", func() (bool, string) {
		pod, err = cluster.WaitPod(ctx, localcluster.BookinfoNamespace, "details-v1")
		if err != nil {
			return false, err.Error()
		}
		return strings.Contains(pod.Annotations["sidecar.istio.io/userVolume"], wasmev1.CacheDir), fmt.Sprint(pod.Annotations)
	})

	// Config update: the running sidecar gets the new value from istiod.
	fd.Spec.Filter.Config = &apiextensionsv1.JSON{Raw: []byte(`"{\"name\":\"hello\",\"value\":\"there\"}"`)}
	if err := cluster.Client.Update(ctx, fd); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	c = waitChain(t, p, "the updated config", func(c *xdsproxy.Chain) bool {
		return len(c.Wasm) == 1 && strings.Contains(string(c.Wasm[0].Configuration), "there")
	})
	if got := get(t, p).Values("hello"); !slices.Equal(got, []string{"there"}) {
		t.Fatalf("hello = %q after the update, want [there]; chain: %s", got, describe(c))
	}
	t.Logf("config update -> hello: there in %s (same proxy, %d listener updates so far)", time.Since(start).Round(time.Millisecond), len(p.Updates()))

	// Delete: the filter leaves the sidecar, the EnvoyFilters go.
	if err := cluster.Client.Delete(ctx, fd); err != nil {
		t.Fatal(err)
	}
	waitChain(t, p, "no Wasm filter after deletion", func(c *xdsproxy.Chain) bool { return len(c.Wasm) == 0 })
	if got := get(t, p).Get("hello"); got != "" {
		t.Errorf("hello = %q after deletion", got)
	}
	eventually(t, "the FilterDeployment to go", func() (bool, string) {
		err := cluster.Client.Get(ctx, client.ObjectKeyFromObject(fd), &wasmev1.FilterDeployment{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
	if efs := envoyFilters(t); len(efs) != 0 {
		t.Errorf("EnvoyFilters left after deletion: %v", efs)
	}
	for _, u := range p.Updates() {
		if u.Err != nil {
			t.Errorf("the sidecar refused listener version %s: %v", u.Version, u.Err)
		}
	}
}

// TestFilterOrder puts three filters on details-v1, created in the opposite of their chain
// order (docs/api.md, "Order"): phase first (AUTHN at the head of the chain, before Istio's own
// filters; UNSPECIFIED just before the router), then priority, then name, never creation time.
// Request callbacks run in chain order, response callbacks in reverse. Deleting one leaves the
// others running.
func TestFilterOrder(t *testing.T) {
	ctx := context.Background()
	p := sidecar(t)
	push(t, "filters/custom-header:v1")
	fdYAML := func(name, value, phase string) string {
		return fmt.Sprintf(`apiVersion: wasme.io/v1
kind: FilterDeployment
metadata:
  name: %s
  namespace: bookinfo
spec:
  deployment:
    istio:
      kind: Deployment
      labels:
        app: details
  filter:
    image: %s/filters/custom-header:v1
    config: '{"name":"x-order","value":"%s"}'
    phase: %s
`, name, cluster.Registry.Host, value, phase)
	}
	for _, fd := range [][3]string{{"filter-b", "b", "UNSPECIFIED"}, {"filter-a", "a", "UNSPECIFIED"}, {"filter-z", "z", "AUTHN"}} {
		applyFD(t, fdYAML(fd[0], fd[1], fd[2]))
		eventually(t, fd[0]+" Ready", func() (bool, string) { return readyFD(t, fd[0]) })
	}
	c := waitChain(t, p, "three filters", func(c *xdsproxy.Chain) bool { return len(c.Wasm) == 3 })
	if got, want := wasmNames(c), []string{"filter-z.bookinfo", "filter-a.bookinfo", "filter-b.bookinfo"}; !slices.Equal(got, want) {
		t.Errorf("chain order %v, want %v", got, want)
	}
	// Where istiod put them among its own filters: the AUTHN one first of all, the others just
	// before the router.
	const wasm = "envoy.filters.http.wasm"
	f := c.HTTPFilters
	if n := len(f); n < 5 || f[0] != wasm || f[1] == wasm || f[n-3] != wasm || f[n-2] != wasm || f[n-1] != "envoy.filters.http.router" {
		t.Errorf("HTTP filters %v: want a Wasm filter first, then Istio's, then two Wasm filters and the router", f)
	}
	// Response headers pass b first, then a, then z: each appends its value.
	if got := get(t, p).Values("x-order"); !slices.Equal(got, []string{"b", "a", "z"}) {
		t.Errorf("x-order = %q, want [b a z] (response callbacks in reverse chain order)", got)
	}
	if err := cluster.Client.Delete(ctx, getFD(t, "filter-a")); err != nil {
		t.Fatal(err)
	}
	c = waitChain(t, p, "filter-a gone", func(c *xdsproxy.Chain) bool { return len(c.Wasm) == 2 })
	if got := wasmNames(c); !slices.Equal(got, []string{"filter-z.bookinfo", "filter-b.bookinfo"}) {
		t.Errorf("after deleting filter-a the chain runs %v", got)
	}
	if got := get(t, p).Values("x-order"); !slices.Equal(got, []string{"b", "z"}) {
		t.Errorf("x-order = %q after deleting filter-a, want [b z]", got)
	}
	for _, name := range []string{"filter-b", "filter-z"} {
		if err := cluster.Client.Delete(ctx, getFD(t, name)); err != nil {
			t.Fatal(err)
		}
	}
	waitChain(t, p, "no Wasm filters", func(c *xdsproxy.Chain) bool { return len(c.Wasm) == 0 })
}

// TestDemoWalkthrough runs what `make demo` prints (localcluster.SeedWalkthrough) and checks
// its output shows the header before and after as the seed does.
func TestDemoWalkthrough(t *testing.T) {
	ctx := context.Background()
	var out strings.Builder
	res, err := cluster.SeedWalkthrough(ctx, &out)
	t.Log(out.String())
	if err != nil {
		t.Fatal(err)
	}
	defer res.Sidecar.Close() //nolint:errcheck // stopping the proxy on the way out; its log has what went wrong
	t.Cleanup(func() {
		fd := &wasmev1.FilterDeployment{}
		fd.Namespace, fd.Name = localcluster.BookinfoNamespace, seedName
		_ = cluster.Client.Delete(ctx, fd)
		eventually(t, "the demo's FilterDeployment to go", func() (bool, string) {
			return len(envoyFilters(t)) == 0, fmt.Sprint(envoyFilters(t))
		})
	})
	s := out.String()
	before, after, ok := strings.Cut(s, "kubectl apply")
	if !ok {
		t.Fatal("no kubectl apply step in the output")
	}
	for _, want := range []string{"pod/wasme-operator-", "daemonset.apps/wasme-cache", "HTTP/1.1 200 OK"} {
		if !strings.Contains(before, want) {
			t.Errorf("before applying, the output lacks %q", want)
		}
	}
	if strings.Contains(before, "hello:") {
		t.Error("the response before applying shows a hello header")
	}
	for _, want := range []string{"details-v1-bookinfo-custom-filter.bookinfo", "productpage-v1-bookinfo-custom-filter.bookinfo",
		"kind: EnvoyFilter", "state: Succeeded", "\nhello: world!\n"} {
		if !strings.Contains(after, want) {
			t.Errorf("after applying, the output lacks %q", want)
		}
	}
}
