// Package wasmbuild makes WebAssembly modules for tests, the demo and the bench: it compiles
// the Go proxy-wasm filters of this repository (once per process and source directory) and
// encodes small modules by hand (encode.go, hostile.go, TinyModule) that no toolchain would
// emit.
package wasmbuild

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"wasme.io/wasme/internal/testing/tools"
)

type build struct {
	once sync.Once
	wasm []byte
	err  error
}

var builds sync.Map // absolute source dir -> *build

// Example builds examples/filters/<name>.
func Example(name string) ([]byte, error) {
	return Build(filepath.Join(tools.RepoRoot(), "examples", "filters", name))
}

// ExampleT is Example failing the test on error.
func ExampleT(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := Example(name)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// Build compiles the Go package in dir with GOOS=wasip1 GOARCH=wasm -buildmode=c-shared, as
// `wasme build go` does, and returns the module bytes. The first caller builds; later callers
// of the same process get the same bytes (or error). GOWORK=off: the filters are modules of
// their own.
func Build(dir string) ([]byte, error) {
	v, _ := builds.LoadOrStore(dir, &build{})
	b := v.(*build)
	b.once.Do(func() { b.wasm, b.err = compile(dir) })
	return b.wasm, b.err
}

// BuildT is Build failing the test on error.
func BuildT(tb testing.TB, dir string) []byte {
	tb.Helper()
	b, err := Build(dir)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func compile(dir string) ([]byte, error) {
	tmp, err := os.MkdirTemp("", "wasmbuild-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, filepath.Base(dir)+".wasm")
	cmd := exec.Command("go", "build", "-buildmode=c-shared", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "GOWORK=off")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("building %s: %w\n%s", dir, err, stderr.String())
	}
	return os.ReadFile(out)
}

// TinyModule returns a valid Wasm module of a few dozen bytes whose only content is one empty
// function exported under each given name (e.g. "proxy_abi_version_0_2_1"). Tests that need
// a module but not a filter use it to stay fast.
func TinyModule(exports ...string) []byte {
	m := &Module{}
	if len(exports) > 0 {
		fn := m.Func(nil, nil, 0)
		for _, name := range exports {
			m.Export(name, fn)
		}
	}
	return m.Bytes()
}

// WithCustomSection returns module with a custom section (id 0) named name holding payload
// appended. Engines ignore custom sections, so the result behaves as module does, under a
// new digest.
func WithCustomSection(module []byte, name string, payload []byte) []byte {
	body := appendName(nil, name)
	body = append(body, payload...)
	out := append([]byte{}, module...)
	out = append(out, 0)
	out = appendU(out, uint64(len(body)))
	return append(out, body...)
}
