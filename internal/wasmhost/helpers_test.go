package wasmhost

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"

	"wasme.io/wasme/internal/testing/tools"
	"wasme.io/wasme/internal/testing/wasmbuild"
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

func customHeader(t testing.TB) []byte { return wasmbuild.ExampleT(t, "custom-header") }

func probe(t testing.TB) []byte {
	return wasmbuild.BuildT(t, filepath.Join(tools.RepoRoot(), "internal", "wasmhost", "testdata", "probe"))
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
