package wasmhost

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"

	"wasme.io/wasme/internal/wasmhost/wasmtest"
)

var (
	cacheOnce sync.Once
	cache     *Cache
)

// testCache compiles each module once per test binary: compiling a Go module takes seconds.
func testCache() *Cache {
	cacheOnce.Do(func() { cache = NewCache() })
	return cache
}

func customHeader(t testing.TB) []byte { return wasmtest.Example(t, "custom-header") }

func probe(t testing.TB) []byte {
	return wasmtest.Build(t, filepath.Join(wasmtest.RepoRoot(), "internal", "wasmhost", "testdata", "probe"))
}

// syncBuffer collects log output written from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newPlugin starts a plugin with the shared compilation cache and a log the test can read.
func newPlugin(t testing.TB, cfg PluginConfig) (*Plugin, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	cfg.Cache = testCache()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	p, err := NewPlugin(context.Background(), cfg)
	if err != nil {
		t.Fatalf("NewPlugin: %v", err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	return p, logs
}

// rawModule encodes a minimal WebAssembly module with no-argument functions: imports from
// module "env", and one defined function exported under every name in exports.
func rawModule(imports, exports []string) []byte {
	vec := func(items ...[]byte) []byte {
		out := []byte{byte(len(items))}
		for _, it := range items {
			out = append(out, it...)
		}
		return out
	}
	name := func(s string) []byte { return append([]byte{byte(len(s))}, s...) }
	section := func(id byte, body []byte) []byte { return append([]byte{id, byte(len(body))}, body...) }
	m := []byte("\x00asm\x01\x00\x00\x00")
	m = append(m, section(1, vec([]byte{0x60, 0, 0}))...)
	var imps [][]byte
	for _, im := range imports {
		imps = append(imps, append(append(name("env"), name(im)...), 0, 0))
	}
	if len(imps) > 0 {
		m = append(m, section(2, vec(imps...))...)
	}
	m = append(m, section(3, vec([]byte{0}))...)
	var exps [][]byte
	for _, ex := range exports {
		exps = append(exps, append(name(ex), 0, byte(len(imports))))
	}
	m = append(m, section(7, vec(exps...))...)
	m = append(m, section(10, vec([]byte{2, 0, 0x0b}))...)
	return m
}
