package wasmhost

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"wasme.io/wasme/internal/testing/wasmbuild"
)

// TestHostileModules starts the hostile modules of issue 11 (rows 1-3): each is refused with an
// error naming what it broke, in bounded time, and the process is still here to say so.
func TestHostileModules(t *testing.T) {
	tests := []struct {
		name    string
		module  []byte
		wantErr string
	}{
		{"no memory, trapping tick", wasmbuild.NoMemoryTickTrap(), `exports no memory named "memory"`},
		{"no memory, host call", wasmbuild.NoMemoryHostCall(), `exports no memory named "memory"`},
		{"start section loops", wasmbuild.StartLoop(), "start function did not return within 300ms (the start-up time limit)"},
		{"shared data flood", wasmbuild.SharedDataFlood(1024, 1024), "exceeded the host limit on shared data (16 MiB per VM)"},
		{"queue flood", wasmbuild.QueueFlood(20000), "exceeded the host limit on shared queue length (10000 items)"},
		{"huge table", wasmbuild.HugeTable(1 << 27), "exceeded the host limit on table size (1048576 entries): table 0 declares 134217728 entries"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			p, err := NewPlugin(context.Background(), PluginConfig{
				Module: tc.module, Name: "hostile", StartTimeout: 300 * time.Millisecond,
				Logger: slog.New(slog.DiscardHandler),
			})
			if err == nil {
				p.Close(context.Background())
				t.Fatalf("the hostile module was accepted")
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %q does not contain %q", err, tc.wantErr)
			}
			t.Logf("refused in %v: %v", time.Since(start).Round(time.Millisecond), err)
		})
	}
	// A table without a maximum cannot grow past the cap: the grow fails, which this filter
	// checks (it accepts its configuration only then).
	p, err := NewPlugin(context.Background(), PluginConfig{Module: wasmbuild.TableGrow(1 << 21), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("table.grow past the cap did not fail: %v", err)
	}
	p.Close(context.Background())
	// The control: the encoder makes modules the host accepts.
	p, err = NewPlugin(context.Background(), PluginConfig{Module: wasmbuild.Minimal(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("minimal module: %v", err)
	}
	p.Close(context.Background())
}

// TestTrappingTick: a filter whose proxy_on_tick traps (after a host call with a bad pointer)
// costs its instance, not the process; the plugin keeps answering, fail closed with a 503.
func TestTrappingTick(t *testing.T) {
	p, err := NewPlugin(context.Background(), PluginConfig{Module: wasmbuild.TickTrap(), Logger: slog.New(slog.DiscardHandler), PoolSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	time.Sleep(50 * time.Millisecond) // dozens of 1 ms ticks
	srv := httptest.NewServer(p.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "upstream") })))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// The instance broke on its first tick; a new one is made for the request and passes it
	// (this filter has no HTTP callbacks), or the request meets the broken one and gets a 503.
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

// TestQueueFloodGoroutines: enqueueing thousands of items starts one notifier, not one
// goroutine per item.
func TestQueueFloodGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	p, err := NewPlugin(context.Background(), PluginConfig{Module: wasmbuild.QueueFlood(5000), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	if n := runtime.NumGoroutine() - before; n > 10 {
		t.Fatalf("%d goroutines more after 5,000 enqueues", n)
	}
}
