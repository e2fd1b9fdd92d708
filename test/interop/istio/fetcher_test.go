// Package istio checks that Istio's own Wasm image fetcher (istio.io/istio/pkg/wasm, the code
// istio-agent runs for WasmPlugin and EnvoyFilter remote code) accepts what `wasme push` writes.
// It is a module of its own so that the main module does not depend on istio.io/istio.
//
// Run: cd test/interop/istio && go test ./...
package istio

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"istio.io/istio/pkg/wasm"
)

func repoRoot(t *testing.T) string {
	root, err := filepath.Abs(filepath.Join("..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func run(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// startRegistry starts the repository's test registry (the pinned distribution registry,
// internal/testing/registry) without auth, through its serve command since this module cannot
// import wasme's: Istio's fetcher refuses basic auth challenges whose realm is not an http(s)
// URL, which htpasswd realms are not.
func startRegistry(t *testing.T, root string) string {
	t.Helper()
	cmd := exec.Command("go", "run", "./internal/testing/registry/serve", "-dir", t.TempDir())
	cmd.Dir = root
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the test registry: %v", err)
	}
	// Closing stdin stops it (and its registry child) cleanly; the pid is waited for.
	t.Cleanup(func() { _ = stdin.Close(); _ = cmd.Wait() })
	host, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("the test registry did not start (its errors are above): %v", err)
	}
	return strings.TrimSpace(host)
}

func TestIstioFetcherReadsWasmePush(t *testing.T) {
	root := repoRoot(t)
	bin := filepath.Join(t.TempDir(), "wasme")
	run(t, root, nil, "go", "build", "-o", bin, "./cmd/wasme")
	module := filepath.Join(t.TempDir(), "custom-header.wasm")
	run(t, filepath.Join(root, "examples", "filters", "custom-header"), []string{"GOOS=wasip1", "GOARCH=wasm"}, "go", "build", "-buildmode=c-shared", "-o", module, ".")
	want, err := os.ReadFile(module)
	if err != nil {
		t.Fatal(err)
	}
	host := startRegistry(t, root)
	home := t.TempDir()
	env := []string{"HOME=" + home, "DOCKER_CONFIG=" + filepath.Join(home, ".docker")}
	ref := host + "/filters/custom-header:v1"
	run(t, "", env, bin, "build", "precompiled", module, "-t", ref, "--root-id", "add_header")
	// Istio's default keychain reads DOCKER_CONFIG; point it at an empty one.
	t.Setenv("DOCKER_CONFIG", filepath.Join(home, ".docker"))
	for _, layout := range []string{"wasme", "compat", "compat-docker"} {
		t.Run(layout, func(t *testing.T) {
			target := host + "/filters/custom-header:" + layout
			run(t, "", env, bin, "tag", ref, target)
			var pushed struct {
				ManifestDigest string `json:"manifestDigest"`
			}
			if err := json.Unmarshal([]byte(run(t, "", env, bin, "push", target, "--plain-http", "--layout", layout, "-o", "json")), &pushed); err != nil {
				t.Fatal(err)
			}
			f := wasm.NewImageFetcher(context.Background(), wasm.ImageFetcherOption{})
			fetch, manifestDigest, err := f.PrepareFetch(target)
			if err != nil {
				t.Fatalf("istio PrepareFetch: %v", err)
			}
			got, err := fetch()
			if err != nil {
				t.Fatalf("istio fetch: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("istio got %d bytes, want %d", len(got), len(want))
			}
			if "sha256:"+manifestDigest != pushed.ManifestDigest { // istio gives the bare hex
				t.Errorf("istio resolved %q, wasme pushed %q", manifestDigest, pushed.ManifestDigest)
			}
		})
	}
}
