// Package registrytest holds small module and build helpers for tests; the registry launcher
// is internal/testing/registry.
package registrytest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TinyModule returns a valid Wasm module of a few dozen bytes whose only content is one empty
// function exported under each given name (e.g. "proxy_abi_version_0_2_1"). Tests that need
// a module but not a filter use it to stay fast.
func TinyModule(exports ...string) []byte {
	b := []byte{0x00, 'a', 's', 'm', 0x01, 0x00, 0x00, 0x00}
	section := func(id byte, body []byte) {
		b = append(b, id)
		b = appendULEB(b, uint32(len(body)))
		b = append(b, body...)
	}
	section(1, []byte{1, 0x60, 0, 0}) // one type: func() -> ()
	if len(exports) == 0 {
		return b
	}
	section(3, []byte{1, 0}) // one function of type 0
	exp := appendULEB(nil, uint32(len(exports)))
	for _, name := range exports {
		exp = appendULEB(exp, uint32(len(name)))
		exp = append(exp, name...)
		exp = append(exp, 0x00, 0) // kind func, index 0
	}
	section(7, exp)
	section(10, []byte{1, 2, 0, 0x0b}) // one body: no locals, end
	return b
}

func appendULEB(b []byte, v uint32) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v != 0 {
			b = append(b, c|0x80)
			continue
		}
		return append(b, c)
	}
}

// RepoRoot finds the wasme module's root from the test's working directory.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.HasPrefix(string(b), "module wasme.io/wasme\n") {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("registrytest: not inside the wasme module")
		}
		dir = parent
	}
}

// BuildExampleFilter builds examples/filters/<name> with the standard Go toolchain for
// wasip1, as `wasme build go` does, and returns the .wasm bytes.
func BuildExampleFilter(t testing.TB, name string) []byte {
	t.Helper()
	src := filepath.Join(RepoRoot(t), "examples", "filters", name)
	out := filepath.Join(t.TempDir(), name+".wasm")
	cmd := exec.Command("go", "build", "-buildmode=c-shared", "-o", out, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", src, err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
