package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/istio"
	"wasme.io/wasme/internal/operator"
	"wasme.io/wasme/internal/testing/localcluster"
	"wasme.io/wasme/internal/testing/xdsproxy"
)

// TestECDSEnvoyFilterThroughIstiod: the EnvoyFilter of ECDS delivery, applied to the real
// istiod, puts into the sidecar's listener an HTTP filter that names the extension config
// through config_discovery (which the test proxy, implementing no ECDS, refuses as such), and
// istiod serves that extension config over ECDS: the Wasm filter with the node cache's URL and
// the module's sha256. Fetching the module is istio-agent's part, which no test here runs.
func TestECDSEnvoyFilterThroughIstiod(t *testing.T) {
	ctx := context.Background()
	p := sidecar(t)
	sum := sha256Hex([]byte("a module only istio-agent would fetch"))
	const id = "ecds-under-test"
	url := istio.ModuleURL(operator.DefaultModuleURLBase, sum)
	ef, err := istio.BuildECDSEnvoyFilter(istio.Filter{
		Name: "ecds", Namespace: localcluster.BookinfoNamespace,
		WorkloadLabels: map[string]string{"app": "details", "version": "v1"},
		ID:             id, RootID: "add_header", ModuleSHA256: sum,
		Config:  wasmev1.FilterConfig{TypeURL: wasmev1.StringValueType, Value: []byte(`{"name":"x-ecds","value":"yes"}`)},
		Context: "SIDECAR_INBOUND", Shape: istio.TypedShape, ModuleURL: url,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := cluster.Client.Create(ctx, ef); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Client.Delete(ctx, ef) })
	name := istio.ExtensionConfigName(id)

	// The listener: the filter is there by reference only.
	deadline := time.Now().Add(90 * time.Second)
	for seen := false; !seen; {
		for _, u := range p.Updates() {
			if u.Err != nil && strings.Contains(u.Err.Error(), "("+name+") comes from extension config discovery") {
				seen = true
			}
		}
		if !seen {
			if time.Now().After(deadline) {
				t.Fatalf("no listener update with %s by config_discovery; updates: %v", name, p.Updates())
			}
			select {
			case <-p.Changed():
			case <-time.After(time.Second):
			}
		}
	}

	// The extension config, as Envoy would request it.
	var w *wasmv3.Wasm
	for w == nil {
		resp, err := p.Discover(ctx, xdsproxy.ExtensionConfigType, []string{name})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.GetResources() {
			tec := &corev3.TypedExtensionConfig{}
			if err := r.UnmarshalTo(tec); err != nil {
				t.Fatalf("decoding an extension config: %v", err)
			}
			if tec.GetName() != name {
				continue
			}
			w = &wasmv3.Wasm{}
			if err := tec.GetTypedConfig().UnmarshalTo(w); err != nil {
				t.Fatalf("extension config %s is a %s: %v", name, tec.GetTypedConfig().GetTypeUrl(), err)
			}
		}
		if w == nil {
			if time.Now().After(deadline) {
				t.Fatalf("istiod serves no extension config %s: %d resources", name, len(resp.GetResources()))
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	remote := w.GetConfig().GetVmConfig().GetCode().GetRemote()
	if remote.GetHttpUri().GetUri() != url || remote.GetSha256() != sum || w.GetConfig().GetRootId() != "add_header" || w.GetConfig().GetName() != id {
		t.Errorf("extension config %s: %v", name, w)
	}

	// Gone before the next test's sidecar asks istiod: it must see no listener with it.
	n := len(p.Updates())
	if err := cluster.Client.Delete(ctx, ef); err != nil {
		t.Fatal(err)
	}
	for {
		us := p.Updates()
		if len(us) > n && us[len(us)-1].Err == nil {
			break
		}
		if time.Now().After(deadline.Add(90 * time.Second)) {
			t.Fatalf("no listener update accepted after the ECDS EnvoyFilter went; updates: %v", us[n:])
		}
		select {
		case <-p.Changed():
		case <-time.After(time.Second):
		}
	}
}
