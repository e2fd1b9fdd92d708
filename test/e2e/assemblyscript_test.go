package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"wasme.io/wasme/internal/testing/localcluster"
	"wasme.io/wasme/internal/testing/wasmbuild"
	"wasme.io/wasme/internal/testing/xdsproxy"
	"wasme.io/wasme/pkg/wasmimage"
)

// TestAssemblyScriptFilter deploys the seed's add-header filter as the original wasme's
// AssemblyScript SDK builds it (examples/assemblyscript/custom-header, built with npm by the
// code behind wasme build assemblyscript): without config, as the seed's FilterDeployment has
// none, then with one. The operator validates it, the sidecar runs it: hello: world!.
func TestAssemblyScriptFilter(t *testing.T) {
	ctx := context.Background()
	module := wasmbuild.AssemblyScriptT(t)
	ref := cluster.Registry.Host + "/filters/as-custom-header:v0.1"
	if _, err := wasmimage.Push(ctx, ref, module, wasmimage.RuntimeConfig{RootIDs: []string{"add_header"}, AbiVersions: []string{"v0.1.0"}},
		wasmimage.WithCAPEM(cluster.Registry.CAPEM)); err != nil {
		t.Fatal(err)
	}
	p := sidecar(t)
	for _, c := range []struct{ name, config, want string }{
		{"as-filter", "", "world!"},
		{"as-filter-config", "\n    config: bar", "bar"},
	} {
		applyFD(t, fmt.Sprintf(`apiVersion: wasme.io/v1
kind: FilterDeployment
metadata:
  name: %s
  namespace: %s
spec:
  deployment:
    istio:
      kind: Deployment
      labels:
        app: details
  filter:
    image: %s%s
`, c.name, localcluster.BookinfoNamespace, ref, c.config))
		eventually(t, c.name+" Ready", func() (bool, string) { return readyFD(t, c.name) })
		want := []string{c.name + "." + localcluster.BookinfoNamespace}
		waitChain(t, p, c.name+" alone in the chain", func(ch *xdsproxy.Chain) bool { return slices.Equal(wasmNames(ch), want) })
		if got := get(t, p).Get("hello"); got != c.want {
			t.Errorf("%s: hello = %q, want %q", c.name, got, c.want)
		}
		if err := cluster.Client.Delete(ctx, getFD(t, c.name)); err != nil {
			t.Fatal(err)
		}
		waitChain(t, p, "no Wasm filters", func(ch *xdsproxy.Chain) bool { return len(ch.Wasm) == 0 })
	}
}
