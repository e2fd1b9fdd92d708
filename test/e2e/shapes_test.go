package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	networkingv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/istio"
	"wasme.io/wasme/internal/testing/localcluster"
	"wasme.io/wasme/internal/testing/xdsproxy"
)

// TestEnvoyFilterShapes applies, for each EnvoyFilter shape internal/istio can emit, an
// EnvoyFilter of that shape for details-v1 and records what the running istiod does with it:
// does the Wasm filter reach the sidecar, with its root id and configuration, and does it run?
// docs/e2e.md keeps the table; this test fails when istiod's behaviour changes from it. It also
// checks that the shape the operator picks for this istiod's version is one istiod applies.
//
// To know istiod has processed the EnvoyFilter under test, a second "marker" EnvoyFilter in
// the typed shape is created after it, and the test waits for the marker's filter: istiod sees
// EnvoyFilters in the order they were written.
func TestEnvoyFilterShapes(t *testing.T) {
	ctx := context.Background()
	p := sidecar(t)
	mod := customHeader(t)
	sum := writeModule(t, mod)

	v, err := istio.ParseVersion(cluster.Istiod.Version)
	if err != nil {
		t.Fatal(err)
	}
	if got := istio.ShapeFor(v); got != istio.TypedShape {
		t.Errorf("the operator would emit the %s shape for istiod %s; only typed_config is applied by it (see the table below)", got, v)
	}

	// Both older shapes match the pre-1.10 filter names (envoy.http_connection_manager,
	// envoy.router), which current istiod no longer translates: the patch matches no filter and
	// is dropped without a log line at the default level. The TypedStruct payload itself would
	// be accepted; the match is what fails.
	want := map[istio.Shape]bool{
		istio.TypedShape:       true,
		istio.TypedStructShape: false,
		istio.LegacyShape:      false,
	}
	for _, shape := range []istio.Shape{istio.TypedShape, istio.TypedStructShape, istio.LegacyShape} {
		t.Run(strings.ReplaceAll(shape.String(), " ", "-"), func(t *testing.T) {
			tag := fmt.Sprintf("shape-%d", shape)
			ef := envoyFilter(t, "under-test-"+tag, tag, shape, sum, `{"name":"x-shape","value":"`+tag+`"}`)
			marker := envoyFilter(t, "marker-"+tag, "marker-"+tag, istio.TypedShape, sum, `{"name":"x-marker","value":"`+tag+`"}`)
			for _, o := range []*networkingv1alpha3.EnvoyFilter{ef, marker} {
				if err := cluster.Client.Create(ctx, o); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = cluster.Client.Delete(ctx, o) })
			}
			c := waitChain(t, p, "the marker filter", func(c *xdsproxy.Chain) bool { return hasFilter(c, "marker-"+tag) })
			applied := hasFilter(c, tag)
			t.Logf("istiod %s, %s shape: applied=%v; chain: %s", cluster.Istiod.Version, shape, applied, describe(c))
			h := get(t, p)
			if got := h.Get("x-marker"); got != tag {
				t.Errorf("x-marker = %q, want %q (the marker filter runs)", got, tag)
			}
			if applied != want[shape] {
				t.Errorf("%s shape: applied = %v, docs/e2e.md says %v", shape, applied, want[shape])
			}
			if applied && h.Get("x-shape") != tag {
				t.Errorf("%s shape is in the chain but x-shape = %q, want %q", shape, h.Get("x-shape"), tag)
			}
			if !applied && h.Get("x-shape") != "" {
				t.Errorf("%s shape is not in the chain but x-shape = %q", shape, h.Get("x-shape"))
			}
			for _, o := range []*networkingv1alpha3.EnvoyFilter{ef, marker} {
				if err := cluster.Client.Delete(ctx, o); err != nil {
					t.Fatal(err)
				}
			}
			waitChain(t, p, "no Wasm filters", func(c *xdsproxy.Chain) bool { return len(c.Wasm) == 0 })
		})
	}
}

func hasFilter(c *xdsproxy.Chain, name string) bool {
	for _, f := range c.Wasm {
		if f.Name == name {
			return true
		}
	}
	return false
}

// envoyFilter builds, with the operator's own builder, an EnvoyFilter for details-v1.
func envoyFilter(t *testing.T, name, id string, shape istio.Shape, sum, config string) *networkingv1alpha3.EnvoyFilter {
	t.Helper()
	ef, err := istio.BuildEnvoyFilter(istio.Filter{
		Name: name, Namespace: localcluster.BookinfoNamespace,
		WorkloadLabels: map[string]string{"app": "details", "version": "v1"},
		ID:             id, RootID: "add_header", ModuleSHA256: sum,
		Config:  wasmev1.FilterConfig{TypeURL: wasmev1.StringValueType, Value: []byte(config)},
		Context: "SIDECAR_INBOUND", Shape: shape,
	})
	if err != nil {
		t.Fatal(err)
	}
	return ef
}

// TestSidecarRefusesMissingModule: an EnvoyFilter naming a module the node does not hold (what
// the operator's wait for the node caches prevents) reaches the sidecar through istiod; the
// test proxy refuses that listener update, as Envoy would, and keeps serving the previous
// chain. Once the bad EnvoyFilter goes, updates are accepted again.
func TestSidecarRefusesMissingModule(t *testing.T) {
	ctx := context.Background()
	p := sidecar(t)
	sum := writeModule(t, customHeader(t))
	good := envoyFilter(t, "good", "good", istio.TypedShape, sum, `{"name":"x-good","value":"yes"}`)
	if err := cluster.Client.Create(ctx, good); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Client.Delete(ctx, good) })
	waitChain(t, p, "the good filter", func(c *xdsproxy.Chain) bool { return hasFilter(c, "good") })
	if got := get(t, p).Get("x-good"); got != "yes" {
		t.Fatalf("x-good = %q", got)
	}

	missing := sha256Hex([]byte("a module no node holds"))
	bad := envoyFilter(t, "missing-module", "missing-module", istio.TypedShape, missing, "")
	if err := cluster.Client.Create(ctx, bad); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Client.Delete(ctx, bad) })
	refused := len(p.Updates())
	waitCtx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	var rejection error
	for rejection == nil {
		ch := p.Changed()
		for _, u := range p.Updates()[refused:] {
			if u.Err != nil {
				rejection = u.Err
			}
		}
		if rejection != nil {
			break
		}
		select {
		case <-ch:
		case <-waitCtx.Done():
			t.Fatalf("the sidecar never refused the update naming a missing module; chain: %s", describe(mustCurrent(p)))
		}
	}
	if !strings.Contains(rejection.Error(), missing) || !strings.Contains(rejection.Error(), "reading the module") {
		t.Errorf("refusal = %v, want it to name the missing module", rejection)
	}
	if c := mustCurrent(p); hasFilter(c, "missing-module") || !hasFilter(c, "good") {
		t.Errorf("after the refusal the sidecar runs %s, want the previous chain", describe(c))
	}
	if got := get(t, p).Get("x-good"); got != "yes" {
		t.Errorf("x-good = %q after the refused update, want the previous chain to keep serving", got)
	}

	if err := cluster.Client.Delete(ctx, bad); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Client.Delete(ctx, good); err != nil {
		t.Fatal(err)
	}
	waitChain(t, p, "no Wasm filters", func(c *xdsproxy.Chain) bool { return len(c.Wasm) == 0 })
}

func mustCurrent(p *xdsproxy.Proxy) *xdsproxy.Chain {
	c, _ := p.Current()
	return c
}
