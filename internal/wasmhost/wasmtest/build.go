// Package wasmtest builds the Go proxy-wasm filters of this repository for tests, once per
// test binary run.
package wasmtest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

type build struct {
	once sync.Once
	wasm []byte
	err  string
}

var builds sync.Map // absolute source dir -> *build

// RepoRoot is the root of the wasme repository (the main module's directory).
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", "..", ".."))
}

// Example builds examples/filters/<name>.
func Example(tb testing.TB, name string) []byte {
	tb.Helper()
	return Build(tb, filepath.Join(RepoRoot(), "examples", "filters", name))
}

// Build compiles the Go package in dir with GOOS=wasip1 GOARCH=wasm -buildmode=c-shared and
// returns the module bytes. The first caller's temporary directory holds the build; the bytes
// are kept for later callers.
func Build(tb testing.TB, dir string) []byte {
	tb.Helper()
	v, _ := builds.LoadOrStore(dir, &build{})
	b := v.(*build)
	b.once.Do(func() {
		out := filepath.Join(tb.TempDir(), filepath.Base(dir)+".wasm")
		cmd := exec.Command("go", "build", "-buildmode=c-shared", "-o", out, ".")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "GOWORK=off")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			b.err = "building " + dir + ": " + err.Error() + "\n" + stderr.String()
			return
		}
		wasm, err := os.ReadFile(out)
		if err != nil {
			b.err = err.Error()
			return
		}
		b.wasm = wasm
	})
	if b.err != "" {
		tb.Fatal(b.err)
	}
	return b.wasm
}
