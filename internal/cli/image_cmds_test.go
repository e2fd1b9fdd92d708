package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"wasme.io/wasme/internal/testing/registry"
	"wasme.io/wasme/internal/testing/tools"
	"wasme.io/wasme/internal/testing/wasmbuild"
	"wasme.io/wasme/pkg/wasmimage"
)

// wasme runs one command line as a user would and returns stdout, stderr and the exit code.
func wasme(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := executeArgs(context.Background(), streams{out: &out, errOut: &errOut}, strings.NewReader(stdin), args)
	return out.String(), errOut.String(), code
}

// isolate points HOME and DOCKER_CONFIG at empty directories, so no real credentials or
// store of the machine are read or written.
func isolate(t *testing.T) string {
	t.Helper()
	// The Go build cache and module cache stay where they are: a cold cache under a fresh
	// HOME would make every test compile the runtime for wasip1 again.
	if os.Getenv("GOCACHE") == "" {
		if dir, err := os.UserCacheDir(); err == nil {
			t.Setenv("GOCACHE", filepath.Join(dir, "go-build"))
		}
	}
	if os.Getenv("GOPATH") == "" {
		if dir, err := os.UserHomeDir(); err == nil {
			t.Setenv("GOPATH", filepath.Join(dir, "go"))
		}
	}
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("DOCKER_CONFIG", filepath.Join(home, ".docker"))
	t.Setenv("WASME_STORE", "")
	return home
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := wasme(t, "", args...)
	if code != 0 {
		t.Fatalf("wasme %s: exit %d: %s", strings.Join(args, " "), code, errOut)
	}
	return out
}

// TestInitBuildPushPull walks the developer path: init a Go project, build it with the
// standard toolchain, list it, log in, push in every layout, pull each back.
func TestInitBuildPushPull(t *testing.T) {
	home := isolate(t)
	reg := registry.StartT(t, registry.Options{Users: map[string]string{"dev": "pa55"}, TLS: true})
	proj := filepath.Join(t.TempDir(), "my-filter")
	mustRun(t, "init", proj, "--language", "go")
	if _, err := os.Stat(filepath.Join(proj, "go.mod")); err != nil {
		t.Fatal(err)
	}
	ref := reg.Host + "/team/my-filter:v1"
	out := mustRun(t, "build", "go", proj, "-t", ref, "--root-id", "add_header", "-o", "json")
	var built imageInfo
	if err := json.Unmarshal([]byte(out), &built); err != nil {
		t.Fatalf("build -o json: %v: %s", err, out)
	}
	if built.AbiVersions[0] != "v0.2.1" || built.RootIDs[0] != "add_header" {
		t.Errorf("built config %+v", built)
	}
	list := mustRun(t, "list")
	if !strings.Contains(list, "NAME") || !strings.Contains(list, reg.Host+"/team/my-filter") || !strings.Contains(list, digest.Digest(built.ModuleDigest).Encoded()[:8]) {
		t.Errorf("list:\n%s", list)
	}
	ca := "--ca-file=" + reg.CAFile

	if _, errOut, code := wasme(t, "", "push", ref, ca); code == 0 || !strings.Contains(errOut, "requires credentials") {
		t.Errorf("push without login: exit %d %s", code, errOut)
	}
	if _, errOut, code := wasme(t, "wrong\n", "login", reg.Host, "-u", "dev", "--password-stdin", ca); code == 0 || !strings.Contains(errOut, "wrong username or password") {
		t.Errorf("login with a wrong password: exit %d %s", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(home, ".wasme", "credentials.json")); err == nil {
		t.Error("a failed login wrote credentials")
	}
	mustRun(t, "login", reg.Host, "-u", "dev", "-p", "pa55", ca)

	for _, layout := range wasmimage.WritableLayouts {
		t.Run(string(layout), func(t *testing.T) {
			target := reg.Host + "/team/my-filter:" + string(layout)
			mustRun(t, "tag", ref, target)
			var pushed, pulled imageInfo
			if err := json.Unmarshal([]byte(mustRun(t, "push", target, "--layout", string(layout), ca, "-o", "json")), &pushed); err != nil {
				t.Fatal(err)
			}
			store2 := t.TempDir()
			if err := json.Unmarshal([]byte(mustRun(t, "pull", target, ca, "--store", store2, "-o", "json")), &pulled); err != nil {
				t.Fatal(err)
			}
			if pulled.ModuleDigest != built.ModuleDigest || pulled.ManifestDigest != pushed.ManifestDigest || pulled.Layout != string(layout) || pulled.RootIDs[0] != "add_header" {
				t.Errorf("pushed %+v, pulled %+v", pushed, pulled)
			}
		})
	}
}

func TestImageCommandsRejectBadInput(t *testing.T) {
	isolate(t)
	reg := registry.StartT(t, registry.Options{Users: map[string]string{"dev": "pa55"}})
	down := registry.StartT(t, registry.Options{})
	down.Stop()
	store := t.TempDir()
	tiny := filepath.Join(t.TempDir(), "tiny.wasm")
	text := filepath.Join(t.TempDir(), "notes.txt")
	noABI := filepath.Join(t.TempDir(), "noabi.wasm")
	badCfg := filepath.Join(t.TempDir(), "runtime-config.json")
	// Modules Envoy would refuse to load, each for a reason the error must name.
	unknownImports := filepath.Join(t.TempDir(), "imports.wasm")
	spec := wasmbuild.Filter("0_2_1")
	spec.Imports = []wasmbuild.SpecImport{wasmbuild.Imp("env", "proxy_teleport", "(i32)->(i32)"), wasmbuild.Imp("wasi_unstable", "proc_exit", "(i32)->()"), wasmbuild.Imp("env", "abort", "(i32,i32,i32,i32)->()")}
	unknownABI := filepath.Join(t.TempDir(), "abi.wasm")
	noMemory := filepath.Join(t.TempDir(), "nomem.wasm")
	bothABIs := filepath.Join(t.TempDir(), "both.wasm")
	both := wasmbuild.Filter("0_1_0")
	both.Exports = append(both.Exports, wasmbuild.Exp("proxy_abi_version_0_2_1", "()->()"))
	for f, b := range map[string][]byte{
		tiny: wasmbuild.Filter("0_2_1").Bytes(), text: []byte("not wasm"), noABI: wasmbuild.TinyModule("_start"), badCfg: []byte(`{"abi_version":"v0.2.1"}`),
		unknownImports: spec.Bytes(), unknownABI: wasmbuild.Spec{Memory: true, Exports: []wasmbuild.SpecExport{wasmbuild.Exp("proxy_abi_version_1_0_0", "()->()")}}.Bytes(),
		noMemory: wasmbuild.TinyModule("proxy_abi_version_0_2_1"), bothABIs: both.Bytes(),
	} {
		if err := os.WriteFile(f, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mustRun(t, "build", "precompiled", tiny, "-t", reg.Host+"/f:v1", "--store", store)
	mustRun(t, "push", reg.Host+"/f:v1", "--store", store, "--plain-http", "-u", "dev", "-p", "pa55")
	// A module that reached the store by pull (which checks only the format and the ABI
	// marker) is still refused by push, before it is in another registry.
	if _, err := wasmimage.Push(context.Background(), reg.Host+"/nomem:v1", wasmbuild.TinyModule("proxy_abi_version_0_2_1"), wasmimage.RuntimeConfig{Type: wasmimage.DefaultRuntimeType, AbiVersions: []string{"v0.2.1"}},
		wasmimage.WithPlainHTTP(true), wasmimage.WithCredentials("dev", "pa55")); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "pull", reg.Host+"/nomem:v1", "--store", store, "--plain-http", "-u", "dev", "-p", "pa55")
	// Two ABI markers load (Envoy takes the first): build warns and says which.
	if _, errOut, code := wasme(t, "", "build", "precompiled", bothABIs, "-t", "both:v1", "--store", t.TempDir()); code != 0 ||
		!strings.Contains(errOut, "warning: the module exports proxy_abi_version_0_1_0 and proxy_abi_version_0_2_1; Envoy uses the first in export order, so it runs as ABI 0.1.0") {
		t.Errorf("build with two ABI markers: exit %d, stderr %q", code, errOut)
	}
	nonEmpty := filepath.Join(t.TempDir(), "taken")
	_ = os.MkdirAll(filepath.Join(nonEmpty, "x"), 0o755)
	auth := []string{"--plain-http", "-u", "dev", "-p", "pa55", "--store", store}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown tag", append([]string{"pull", reg.Host + "/f:nope"}, auth...), "tag nope does not exist"},
		{"unknown repository", append([]string{"pull", reg.Host + "/nope:v1"}, auth...), "repository nope does not exist"},
		{"wrong password", []string{"pull", reg.Host + "/f:v1", "--plain-http", "-u", "dev", "-p", "bad", "--store", store}, "refused the credentials"},
		{"registry down", []string{"pull", down.Host + "/f:v1", "--plain-http", "--store", store}, "connection refused"},
		{"over the size limit", append([]string{"pull", reg.Host + "/f:v1", "--max-size", "10"}, auth...), "limit 10"},
		{"malformed reference", append([]string{"pull", "Bad Ref"}, auth...), "invalid reference"},
		{"malformed digest", append([]string{"pull", reg.Host + "/f@sha256:abc"}, auth...), "bad digest"},
		{"build: not wasm", []string{"build", "precompiled", text, "-t", "f:v1", "--store", store}, "bad magic bytes"},
		{"build: no ABI export", []string{"build", "precompiled", noABI, "-t", "f:v1", "--store", store}, "valid WebAssembly, but not a proxy-wasm filter: no proxy_abi_version_* export"},
		{"build: unknown ABI version", []string{"build", "precompiled", unknownABI, "-t", "f:v1", "--store", store}, "exports proxy_abi_version_1_0_0, an ABI version Envoy does not know"},
		{"build: unknown imports", []string{"build", "precompiled", unknownImports, "-t", "f:v1", "--store", store},
			"missing import env.abort(i32,i32,i32,i32)->() (AssemblyScript's default abort: build with --use abort=abort_proc_exit, as the wasme template does); missing import env.proxy_teleport(i32)->(i32)"},
		{"build: no memory, no allocator", []string{"build", "precompiled", noMemory, "-t", "f:v1", "--store", store}, "missing export malloc or proxy_on_memory_allocate (i32)->(i32); missing export memory"},
		{"push: refused by the load check", append([]string{"push", reg.Host + "/nomem:v1"}, auth...), "push " + reg.Host + "/nomem:v1: wasmhost: not a proxy-wasm filter (ABI 0.2.1): missing export malloc"},
		{"build: bad runtime config", []string{"build", "precompiled", tiny, "-t", "f:v1", "-c", badCfg, "--store", store}, `unknown field "abi_version"`},
		{"build: no tag", []string{"build", "precompiled", tiny, "--store", store}, `"tag" not set`},
		{"build: tinygo missing", []string{"build", "tinygo", t.TempDir(), "-t", "f:v1", "--store", store}, "tinygo is not on PATH"},
		{"build: cargo missing", []string{"build", "rust", t.TempDir(), "-t", "f:v1", "--store", store}, "cargo is not on PATH"},
		{"build: not a directory", []string{"build", "go", text, "-t", "f:v1", "--store", store}, "is not a directory"},
		{"push: not in store", []string{"push", reg.Host + "/other:v1", "--plain-http", "--store", store}, "not in the local store"},
		{"push: unknown layout", []string{"push", reg.Host + "/f:v1", "--layout", "zip", "--store", store}, "unknown layout"},
		{"tag: unknown source", []string{"tag", "nothere:v1", "x:v1", "--store", store}, "not in the local store"},
		{"tag: digest target", []string{"tag", reg.Host + "/f:v1", "x@" + digest.FromString("x").String(), "--store", store}, "needs a tag"},
		{"list: bad output", []string{"list", "-o", "xml", "--store", store}, `invalid argument "xml" for "-o, --output" flag: want table, json or yaml`},
		{"login: wrong password", []string{"login", reg.Host, "-u", "dev", "-p", "bad", "--plain-http"}, "wrong username or password"},
		{"login: registry down", []string{"login", down.Host, "-u", "dev", "-p", "x", "--plain-http"}, "connection refused"},
		{"init: unknown language", []string{"init", filepath.Join(t.TempDir(), "p"), "--language", "cobol"}, "not supported"},
		{"init: directory not empty", []string{"init", nonEmpty}, "not empty"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if strings.HasSuffix(c.name, "missing") { // the toolchain is hidden, whatever the machine has
				t.Setenv("PATH", t.TempDir())
			}
			_, errOut, code := wasme(t, "", c.args...)
			if code == 0 {
				t.Fatalf("exit 0, want an error")
			}
			if !strings.Contains(errOut, c.want) {
				t.Errorf("stderr %q does not say %q", errOut, c.want)
			}
			if n := strings.Count(strings.TrimSpace(errOut), "\n"); n != 0 || !strings.HasPrefix(errOut, "Error: ") {
				t.Errorf("want one line \"Error: ...\", got %q", errOut)
			}
		})
	}
	// Nothing the failures tried to store is there, half-written or whole.
	list := mustRun(t, "list", "--store", store, "-o", "json")
	var entries []imageInfo
	if err := json.Unmarshal([]byte(list), &entries); err != nil || len(entries) != 2 {
		t.Errorf("store after failures holds %s (%v), want only f:v1 and nomem:v1", list, err)
	}
	if err := filepath.WalkDir(store, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".tmp") {
			t.Errorf("temporary file left in the store: %s", p)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}

// TestInitTemplateMatchesExample keeps wasme init's embedded project in step with
// examples/filters/custom-header and its ABI glue.
func TestInitTemplateMatchesExample(t *testing.T) {
	root := tools.RepoRoot()
	pairs := map[string]string{"initdata/go/main.go.txt": "examples/filters/custom-header/main.go"}
	glue, _ := filepath.Glob(filepath.Join(root, "examples/filters/internal/proxywasm/*.go"))
	for _, g := range glue {
		pairs["initdata/go/internal/proxywasm/"+filepath.Base(g)+".txt"] = strings.TrimPrefix(g, root+"/")
	}
	embedded, _ := initGo.ReadDir("initdata/go/internal/proxywasm")
	if len(embedded) != len(glue) {
		t.Errorf("embedded glue has %d files, examples have %d", len(embedded), len(glue))
	}
	for emb, src := range pairs {
		want, err := os.ReadFile(filepath.Join(root, src))
		if err != nil {
			t.Fatal(err)
		}
		got, err := initGo.ReadFile(emb)
		if err != nil {
			t.Fatalf("%s is not embedded: %v", emb, err)
		}
		w := strings.ReplaceAll(string(want), "wasme.io/wasme/examples/filters/internal/proxywasm", "{{MODULE}}/internal/proxywasm")
		if string(got) != w {
			t.Errorf("%s differs from %s: copy it again (cp %s internal/cli/%s, with the import rewritten)", emb, src, src, emb)
		}
	}
}

// TestCredentialSources: docker's config.json (via DOCKER_CONFIG) is used when no flags and no
// wasme credentials are given, and wasme login keeps the other servers of its file.
func TestCredentialSources(t *testing.T) {
	home := isolate(t)
	reg := registry.StartT(t, registry.Options{Users: map[string]string{"dev": "pa55"}})
	tiny := filepath.Join(t.TempDir(), "tiny.wasm")
	if err := os.WriteFile(tiny, wasmbuild.Filter("0_2_1").Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	ref := reg.Host + "/creds/f:v1"
	mustRun(t, "build", "precompiled", tiny, "-t", ref)

	dockerCfg := filepath.Join(home, ".docker", "config.json")
	_ = os.MkdirAll(filepath.Dir(dockerCfg), 0o700)
	if err := os.WriteFile(dockerCfg, []byte(`{"auths":{"`+reg.Host+`":{"auth":"ZGV2OnBhNTU="}}}`), 0o600); err != nil { // dev:pa55
		t.Fatal(err)
	}
	mustRun(t, "push", ref, "--plain-http")
	mustRun(t, "pull", ref, "--plain-http")
	if err := os.Remove(dockerCfg); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := wasme(t, "", "pull", ref, "--plain-http"); code == 0 || !strings.Contains(errOut, "requires credentials") {
		t.Fatalf("pull without any credentials: exit %d %s", code, errOut)
	}

	creds := filepath.Join(home, ".wasme", "credentials.json")
	_ = os.MkdirAll(filepath.Dir(creds), 0o700)
	if err := os.WriteFile(creds, []byte(`{"auths":{"registry.example.com":{"auth":"YTpi"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "login", reg.Host, "-u", "dev", "-p", "pa55", "--plain-http")
	b, err := os.ReadFile(creds)
	if err != nil || !strings.Contains(string(b), "registry.example.com") || !strings.Contains(string(b), reg.Host) {
		t.Errorf("credentials file after login: %s %v", b, err)
	}
	mustRun(t, "pull", ref, "--plain-http")
}
