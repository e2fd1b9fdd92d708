package wasmimage_test

import (
	"bytes"
	"context"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"wasme.io/wasme/internal/testing/registry"
	"wasme.io/wasme/internal/testing/wasmbuild"
	"wasme.io/wasme/pkg/wasmimage"
)

var (
	filterOnce  sync.Once
	filterBytes []byte
)

// customHeader is the seed's filter built from source once per test binary.
func customHeader(t *testing.T) []byte {
	t.Helper()
	filterOnce.Do(func() { filterBytes = wasmbuild.ExampleT(t, "custom-header") })
	if filterBytes == nil {
		t.Fatal("custom-header did not build")
	}
	return filterBytes
}

var seedConfig = wasmimage.RuntimeConfig{Type: "envoy_proxy", AbiVersions: []string{"v0.2.1"}, RootIDs: []string{"add_header"}}

func TestRoundTripEveryLayout(t *testing.T) {
	ctx := context.Background()
	module := customHeader(t)
	if _, err := wasmimage.ValidateModule(ctx, module); err != nil {
		t.Fatalf("custom-header does not validate: %v", err)
	}
	reg := registry.StartT(t, registry.Options{})
	for _, layout := range wasmimage.WritableLayouts {
		t.Run(string(layout), func(t *testing.T) {
			ref := reg.Host + "/filters/custom-header:" + string(layout)
			res, err := wasmimage.Push(ctx, ref, module, seedConfig, wasmimage.WithPlainHTTP(true), wasmimage.WithLayout(layout))
			if err != nil {
				t.Fatalf("push: %v", err)
			}
			if want := digest.FromBytes(module); res.ModuleDigest != want {
				t.Errorf("push module digest %s, want %s", res.ModuleDigest, want)
			}
			img, err := wasmimage.Pull(ctx, ref, wasmimage.WithPlainHTTP(true))
			if err != nil {
				t.Fatalf("pull: %v", err)
			}
			if !bytes.Equal(img.Module, module) {
				t.Errorf("pulled %d bytes, pushed %d", len(img.Module), len(module))
			}
			if img.ModuleDigest != res.ModuleDigest || img.ManifestDigest != res.ManifestDigest {
				t.Errorf("digests: pulled module %s manifest %s, pushed module %s manifest %s", img.ModuleDigest, img.ManifestDigest, res.ModuleDigest, res.ManifestDigest)
			}
			if img.Layout != layout {
				t.Errorf("layout %s, want %s", img.Layout, layout)
			}
			if img.Config.RootID() != "add_header" {
				t.Errorf("root ids %v, want [add_header]", img.Config.RootIDs)
			}
			d, err := wasmimage.Resolve(ctx, ref, wasmimage.WithPlainHTTP(true))
			if err != nil || d != res.ManifestDigest {
				t.Errorf("resolve = %s, %v; want %s", d, err, res.ManifestDigest)
			}
			pinned, err := wasmimage.Pull(ctx, reg.Host+"/filters/custom-header@"+res.ManifestDigest.String(), wasmimage.WithPlainHTTP(true))
			if err != nil || pinned.ModuleDigest != res.ModuleDigest {
				t.Errorf("pull by digest: %v", err)
			}
		})
	}
}
