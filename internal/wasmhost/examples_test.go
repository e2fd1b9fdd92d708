package wasmhost

import (
	"context"
	"encoding/binary"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"wasme.io/wasme/internal/testing/wasmbuild"
)

func TestExampleHeaderRules(t *testing.T) {
	module := wasmbuild.ExampleT(t, "header-rules")
	for _, bad := range []string{"", "[]", `{"request":{"":"x"}}`, `{"requests":{}}`} {
		if err := validate(context.Background(), module, "header_rules", []byte(bad), testCache()); err == nil {
			t.Errorf("configuration %q accepted", bad)
		}
	}
	p, _ := newPlugin(t, PluginConfig{Module: module, RootID: "header_rules",
		Configuration: []byte(`{"request":{"x-team":"payments"},"response":{"x-served-by":"wasme"},"remove":["x-upstream"]}`)})
	var team string
	h := p.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		team = r.Header.Get("X-Team")
		w.Header().Set("X-Upstream", "yes")
	}))
	rec := do(t, h)
	if team != "payments" {
		t.Errorf("upstream saw x-team %q", team)
	}
	if rec.Header().Get("X-Served-By") != "wasme" || rec.Header().Get("X-Upstream") != "" {
		t.Errorf("response headers %v", rec.Header())
	}
}

func TestExampleDenyPath(t *testing.T) {
	module := wasmbuild.ExampleT(t, "deny-path")
	if err := validate(context.Background(), module, "deny_path", []byte(`{"prefixes":["/a"],"status":42}`), testCache()); err == nil ||
		!strings.Contains(err.Error(), "status must be between 200 and 599") {
		t.Errorf("bad status: %v", err)
	}
	p, _ := newPlugin(t, PluginConfig{Module: module, RootID: "deny_path", Configuration: []byte(`{"prefixes":["/admin"],"body":"no\n"}`)})
	reached := 0
	h := p.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { reached++ }))
	tests := []struct {
		path    string
		want    int
		reached int
	}{
		{"/admin/users", 403, 0},
		{"/details/1", 200, 1},
		{"/administrator", 403, 1},
	}
	for _, tc := range tests {
		rec := httptestDo(h, tc.path)
		if rec.Code != tc.want || reached != tc.reached {
			t.Errorf("%s: %d (upstream reached %d times), want %d", tc.path, rec.Code, reached, tc.want)
		}
		if tc.want == 403 && rec.Body.String() != "no\n" {
			t.Errorf("%s: body %q", tc.path, rec.Body)
		}
	}
}

func TestExampleTickCounter(t *testing.T) {
	module := wasmbuild.ExampleT(t, "tick-counter")
	p, _ := newPlugin(t, PluginConfig{Module: module, RootID: "tick_counter", Configuration: []byte(`{"tick_ms":10}`), PoolSize: 2})
	h := p.Wrap(upstreamHandler())
	for i := 1; i <= 3; i++ {
		if got := do(t, h).Header().Get("X-Request-Count"); got != string(rune('0'+i)) {
			t.Fatalf("request %d: x-request-count %q", i, got)
		}
	}
	// Wait for a tick to publish the count; how long it takes is the scheduler's business.
	deadline := time.Now().Add(30 * time.Second)
	for {
		v, _, _ := p.shared.get("tick-counter/published")
		if len(v) == 8 && binary.LittleEndian.Uint64(v) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no tick published the count 3 (published %v)", v)
		}
		time.Sleep(5 * time.Millisecond)
	}
	rec := do(t, h)
	if rec.Header().Get("X-Request-Count") != "4" || rec.Header().Get("X-Published-Count") != "3" {
		t.Fatalf("headers %v", rec.Header())
	}
}

// TestConcurrentStreams runs many clients through a pool of two instances while the timer
// ticks: every request is counted exactly once in the VM-wide shared counter.
func TestConcurrentStreams(t *testing.T) {
	p, _ := newPlugin(t, PluginConfig{Module: wasmbuild.ExampleT(t, "tick-counter"), RootID: "tick_counter",
		Configuration: []byte(`{"tick_ms":1}`), PoolSize: 2})
	h := p.Wrap(upstreamHandler())
	const clients, each = 8, 25
	counts := make(chan string, clients*each)
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for range each {
				rec := httptestDo(h, "/")
				if rec.Code != 200 {
					t.Errorf("status %d", rec.Code)
				}
				counts <- rec.Header().Get("X-Request-Count")
			}
		})
	}
	wg.Wait()
	close(counts)
	seen := map[string]bool{}
	for c := range counts {
		if seen[c] {
			t.Errorf("count %s handed out twice", c)
		}
		seen[c] = true
	}
	for i := 1; i <= clients*each; i++ {
		if !seen[strconv.Itoa(i)] {
			t.Errorf("count %d missing", i)
		}
	}
}
