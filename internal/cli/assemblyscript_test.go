package cli

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"wasme.io/wasme/internal/testing/registry"
	"wasme.io/wasme/internal/testing/wasmbuild"
)

// TestAssemblyScriptProject: wasme init --language assemblyscript writes the original wasme's
// template, wasme build assemblyscript builds it with npm as is, and wasme run serves it from
// the local store (then from the registry with --pull always): hello: world!.
func TestAssemblyScriptProject(t *testing.T) {
	npmCache := wasmbuild.NPMCacheDir()
	if os.Getenv("WASME_TOOLS_CACHE") == "" { // isolate moves HOME; the registry binary stays
		home, _ := os.UserHomeDir()
		t.Setenv("WASME_TOOLS_CACHE", filepath.Join(home, ".cache", "wasme-tools"))
	}
	isolate(t)
	t.Setenv("npm_config_cache", npmCache)
	reg := registry.StartT(t, registry.Options{})
	store := t.TempDir()
	dir := filepath.Join(t.TempDir(), "my-filter")
	mustRun(t, "init", dir, "--language", "assemblyscript")
	ref := reg.Host + "/filters/as-header:v1"
	out := mustRun(t, "build", "assemblyscript", dir, "-t", ref, "--store", store)
	if !strings.Contains(out, "ABI v0.1.0, root ids add_header") {
		t.Errorf("build output %q", out)
	}
	up := upstream(t)
	for _, pull := range []string{"never", "missing"} {
		addr, stop, line := startRunLine(t, ref, "--upstream", up.URL, "--listen", "127.0.0.1:0", "--store", store, "--pull", pull)
		if !strings.Contains(line, "(local store; root id \"add_header\", ABI 0.1.0)") {
			t.Errorf("--pull %s: %q does not say it ran from the local store", pull, line)
		}
		getHello(t, addr, "world!")
		if _, err := stop(); err != nil {
			t.Fatal(err)
		}
	}
	mustRun(t, "push", ref, "--store", store, "--plain-http")
	addr, stop, line := startRunLine(t, ref, "--upstream", up.URL, "--listen", "127.0.0.1:0", "--store", t.TempDir(), "--pull", "always", "--plain-http", "--config", "bar")
	if !strings.Contains(line, "(pulled from its registry;") {
		t.Errorf("--pull always: %q", line)
	}
	getHello(t, addr, "bar")
	if _, err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestAssemblyScriptRefusals: a project that does not compile fails with the compiler's
// message; without npm the one line says what to install.
func TestAssemblyScriptRefusals(t *testing.T) {
	npmCache := wasmbuild.NPMCacheDir()
	isolate(t)
	t.Setenv("npm_config_cache", npmCache)
	dir := filepath.Join(t.TempDir(), "broken")
	if err := wasmbuild.CopyProject(wasmbuild.AssemblyScriptExample(), dir); err != nil {
		t.Fatal(err)
	}
	index := filepath.Join(dir, "assembly", "index.ts")
	src, _ := os.ReadFile(index)
	if err := os.WriteFile(index, []byte(strings.Replace(string(src), "return FilterHeadersStatusValues.Continue;", "return nope;", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := wasme(t, "", "build", "assemblyscript", dir, "-t", "f:v1", "--store", t.TempDir())
	last := errOut[strings.LastIndex(strings.TrimSuffix(errOut, "\n"), "\n")+1:]
	if code == 0 || !strings.Contains(last, "Error: build assemblyscript: the AssemblyScript compiler failed: ERROR TS2304: Cannot find name 'nope'. (in assembly/index.ts(32,11))") {
		t.Errorf("exit %d, last line %q", code, last)
	}

	t.Setenv("PATH", t.TempDir())
	_, errOut, code = wasme(t, "", "build", "assemblyscript", dir, "-t", "f:v1", "--store", t.TempDir())
	if code == 0 || errOut != "Error: build assemblyscript: npm is not on PATH: install Node.js and npm (e.g. apt-get install nodejs npm), or build the .wasm yourself and use wasme build precompiled\n" {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}

func getHello(t *testing.T, addr, want string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/details/123")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("Hello"); got != want {
		t.Errorf("hello %q, want %q (headers %v)", got, want, resp.Header)
	}
}

// TestInitAssemblyScriptMatchesExample keeps wasme init's AssemblyScript template in step with
// examples/assemblyscript/custom-header, which the host and end-to-end tests build.
func TestInitAssemblyScriptMatchesExample(t *testing.T) {
	src := wasmbuild.AssemblyScriptExample()
	n := 0
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			if d != nil && d.IsDir() && (d.Name() == "node_modules" || d.Name() == "build") {
				return filepath.SkipDir
			}
			return err
		}
		rel, _ := filepath.Rel(src, p)
		want, _ := os.ReadFile(p)
		got, err := initAssemblyScript.ReadFile("initdata/assemblyscript/" + rel + ".txt")
		if err != nil || string(got) != string(want) {
			t.Errorf("initdata/assemblyscript/%s.txt differs from %s (%v): copy it again", rel, p, err)
		}
		n++
		return nil
	})
	if err != nil || n < 5 {
		t.Fatalf("walked %d files: %v", n, err)
	}
}
