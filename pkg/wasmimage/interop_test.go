package wasmimage_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"wasme.io/wasme/internal/testing/registry"
	"wasme.io/wasme/internal/testing/tools"
	"wasme.io/wasme/pkg/wasmimage"
)

var (
	toolsOnce sync.Once
	toolPaths = map[string]string{}
	toolsErr  error
)

// peerTool returns the pinned oras or crane binary, built by hack/tools/build.sh (once per
// pin and machine, cached outside the work tree).
func peerTool(t *testing.T, name string) string {
	t.Helper()
	toolsOnce.Do(func() {
		root := tools.RepoRoot()
		for _, tool := range []string{"oras", "crane"} {
			cmd := exec.Command(filepath.Join(root, "hack", "tools", "build.sh"), tool)
			cmd.Stderr = os.Stderr
			out, err := cmd.Output()
			if err != nil {
				toolsErr = err
				return
			}
			toolPaths[tool] = strings.TrimSpace(string(out))
		}
	})
	if toolsErr != nil {
		t.Fatalf("building the peer tools: %v", toolsErr)
	}
	return toolPaths[name]
}

func runTool(t *testing.T, dir, bin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "DOCKER_CONFIG="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestInteropPeersReadWhatWasmeWrites: oras and crane pull every layout wasme pushes.
func TestInteropPeersReadWhatWasmeWrites(t *testing.T) {
	ctx := context.Background()
	oras, crane := peerTool(t, "oras"), peerTool(t, "crane")
	module := customHeader(t)
	reg := registry.StartT(t, registry.Options{})
	for _, layout := range wasmimage.WritableLayouts {
		t.Run(string(layout), func(t *testing.T) {
			ref := reg.Host + "/interop/out:" + string(layout)
			res, err := wasmimage.Push(ctx, ref, module, seedConfig, plain, wasmimage.WithLayout(layout))
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(runTool(t, "", crane, "digest", "--insecure", ref)); got != res.ManifestDigest.String() {
				t.Errorf("crane digest %s, wasme pushed %s", got, res.ManifestDigest)
			}
			switch layout {
			case wasmimage.LayoutWasme:
				// oras names files by their title annotation: filter.wasm, runtime-config.json.
				dir := t.TempDir()
				runTool(t, dir, oras, "pull", "--plain-http", ref, "-o", dir)
				b, err := os.ReadFile(filepath.Join(dir, "filter.wasm"))
				if err != nil || !bytes.Equal(b, module) {
					t.Errorf("oras pull: filter.wasm %d bytes, %v", len(b), err)
				}
				cfg, err := os.ReadFile(filepath.Join(dir, "runtime-config.json"))
				if c, perr := wasmimage.ParseRuntimeConfig(cfg); err != nil || perr != nil || c.RootID() != "add_header" {
					t.Errorf("oras pull: runtime-config.json %q %v %v", cfg, err, perr)
				}
				fallthrough
			case wasmimage.LayoutCNCF:
				blob := runTool(t, "", crane, "blob", "--insecure", reg.Host+"/interop/out@"+res.ModuleDigest.String())
				if digest.FromString(blob) != res.ModuleDigest {
					t.Errorf("crane blob: digest %s", digest.FromString(blob))
				}
			case wasmimage.LayoutCompat, wasmimage.LayoutCompatDocker:
				// crane export flattens the image's filesystem: the compat layer must be a
				// real image layer holding plugin.wasm.
				tarPath := filepath.Join(t.TempDir(), "fs.tar")
				runTool(t, "", crane, "export", "--insecure", ref, tarPath)
				f, err := os.Open(tarPath)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close() //nolint:errcheck // opened for reading
				tr := tar.NewReader(f)
				found := false
				for {
					h, err := tr.Next()
					if err != nil {
						break
					}
					if h.Name == "plugin.wasm" {
						var b bytes.Buffer
						_, _ = b.ReadFrom(tr)
						found = bytes.Equal(b.Bytes(), module)
					}
				}
				if !found {
					t.Error("crane export: no plugin.wasm with the module's bytes")
				}
			}
		})
	}
}

// TestInteropWasmeReadsWhatPeersWrite: oras and crane push the foreign layouts, wasme pulls.
func TestInteropWasmeReadsWhatPeersWrite(t *testing.T) {
	ctx := context.Background()
	oras, crane := peerTool(t, "oras"), peerTool(t, "crane")
	module := customHeader(t)
	reg := registry.StartT(t, registry.Options{})
	dir := t.TempDir()
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("plugin.wasm", module)
	write("config.json", []byte(`{"architecture":"wasm","os":"wasip1","layerDigests":["`+digest.FromBytes(module).String()+`"]}`))
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	_ = tw.WriteHeader(&tar.Header{Name: "plugin.wasm", Mode: 0o644, Size: int64(len(module)), Typeflag: tar.TypeReg})
	_, _ = tw.Write(module)
	_ = tw.Close()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(tarBuf.Bytes())
	_ = zw.Close()
	write("layer.tar.gz", gz.Bytes())

	cases := []struct {
		name   string
		push   func(ref string)
		layout wasmimage.Layout
	}{
		{"oras wasm-to-oci", func(ref string) {
			runTool(t, dir, oras, "push", "--plain-http", ref, "plugin.wasm:"+wasmimage.MediaTypeWasmToOCILayer)
		}, wasmimage.LayoutWasmToOCI},
		{"oras CNCF artifact", func(ref string) {
			runTool(t, dir, oras, "push", "--plain-http", "--config", "config.json:"+wasmimage.MediaTypeCNCFConfig, ref, "plugin.wasm:"+wasmimage.MediaTypeCNCFWasm)
		}, wasmimage.LayoutCNCF},
		{"oras raw layer", func(ref string) {
			runTool(t, dir, oras, "push", "--plain-http", ref, "plugin.wasm")
		}, wasmimage.LayoutRawLayer},
		{"oras wasme layout", func(ref string) {
			write("runtime-config.json", []byte(`{"type":"envoy_proxy","abiVersions":["v0.2.1"],"config":{"rootIds":["add_header"]}}`))
			runTool(t, dir, oras, "push", "--plain-http", "--image-spec", "v1.0", "--config", "runtime-config.json:"+wasmimage.MediaTypeWasmeConfig, ref, "runtime-config.json:"+wasmimage.MediaTypeWasmeConfig, "plugin.wasm:"+wasmimage.MediaTypeWasmeContentLayer)
		}, wasmimage.LayoutWasme},
		{"crane compat OCI", func(ref string) {
			runTool(t, dir, crane, "append", "--insecure", "--oci-empty-base", "-f", "layer.tar.gz", "-t", ref)
		}, wasmimage.LayoutCompat},
		{"crane compat Docker", func(ref string) {
			runTool(t, dir, crane, "append", "--insecure", "-f", "layer.tar.gz", "-t", ref)
		}, wasmimage.LayoutCompatDocker},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ref := reg.Host + "/interop/in:v" + string(rune('a'+i))
			c.push(ref)
			img, err := wasmimage.Pull(ctx, ref, plain)
			if err != nil {
				t.Fatalf("wasme pull: %v", err)
			}
			if !bytes.Equal(img.Module, module) || img.Layout != c.layout {
				t.Errorf("pulled %d bytes in layout %s, want %d in %s", len(img.Module), img.Layout, len(module), c.layout)
			}
			want := strings.TrimSpace(runTool(t, "", crane, "digest", "--insecure", ref))
			if img.ManifestDigest.String() != want {
				t.Errorf("manifest digest %s, crane says %s", img.ManifestDigest, want)
			}
		})
	}
}
