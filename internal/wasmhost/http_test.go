package wasmhost

import (
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

func upstreamHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream", "yes")
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "upstream saw "+r.Method+" "+r.URL.RequestURI())
	})
}

func httptestDo(h http.Handler, path string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return rec
}

func do(t *testing.T, h http.Handler, header ...string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest("GET", "/details/123?x=1", nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestCustomHeaderThroughWrap(t *testing.T) {
	tests := []struct {
		name, config, header, value string
	}{
		{"default", "", "hello", "world!"},
		{"configured", `{"name":"x-a","value":"b"}`, "x-a", "b"},
		{"only the name", `{"name":"x-only"}`, "x-only", "world!"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := newPlugin(t, PluginConfig{Module: customHeader(t), RootID: "add_header", Configuration: []byte(tc.config)})
			rec := do(t, p.Wrap(upstreamHandler()))
			if rec.Code != 200 || rec.Header().Get(tc.header) != tc.value || rec.Header().Get("X-Upstream") != "yes" {
				t.Fatalf("got %d %v", rec.Code, rec.Header())
			}
			if got := rec.Body.String(); got != "upstream saw GET /details/123?x=1" {
				t.Fatalf("body %q", got)
			}
		})
	}
}

// TestChainOrder checks Envoy's order: response callbacks run from the last filter to the
// first, so the inner filter's header value comes first.
func TestChainOrder(t *testing.T) {
	a, _ := newPlugin(t, PluginConfig{Module: customHeader(t), RootID: "add_header", Configuration: []byte(`{"name":"x-order","value":"a"}`)})
	b, _ := newPlugin(t, PluginConfig{Module: customHeader(t), RootID: "add_header", Configuration: []byte(`{"name":"x-order","value":"b"}`)})
	rec := do(t, Chain(a, b)(upstreamHandler()))
	if got := rec.Header().Values("X-Order"); !slices.Equal(got, []string{"b", "a"}) {
		t.Fatalf("x-order %v, want [b a]", got)
	}
}

// TestHostileRequests: each misbehaviour is contained with the failure policy, the error is
// logged clearly, and the same plugin serves the next ordinary request.
func TestHostileRequests(t *testing.T) {
	pr := probe(t)
	tests := []struct {
		probe    string
		failOpen bool
		want     int
		wantLog  string
		// timeout is the per-call limit. Only the loops are meant to reach it; the others get a
		// limit no loaded machine reaches, so a slow call is not mistaken for their failure.
		timeout time.Duration
	}{
		{"loop", false, 503, "proxy_on_request_headers did not return within 100ms", 100 * time.Millisecond},
		{"loop", true, 200, "did not return within", 100 * time.Millisecond},
		{"hog", false, 503, "memory limit of 64 MiB", 30 * time.Second},
		{"panic", false, 503, "proxy_on_request_headers trapped: wasm error: unreachable", 0},
		{"panic", true, 200, "probe: told to panic", 0},
		{"response-panic", false, 503, "proxy_on_response_headers", 0},
		{"response-panic", true, 200, "proxy_on_response_headers", 0},
		{"pause", false, 503, "paused the request and did not continue it within 200ms", 0},
		{"deny", false, 403, "", 0},
	}
	for _, tc := range tests {
		name := tc.probe
		if tc.failOpen {
			name += "/fail-open"
		}
		if tc.timeout == 0 {
			tc.timeout = 10 * time.Second
		}
		t.Run(name, func(t *testing.T) {
			p, logs := newPlugin(t, PluginConfig{
				Module:       pr,
				Name:         "probe",
				FailOpen:     tc.failOpen,
				CallTimeout:  tc.timeout,
				PauseTimeout: 200 * time.Millisecond,
				MemoryLimit:  64 << 20,
				PoolSize:     1,
			})
			h := p.Wrap(upstreamHandler())
			rec := do(t, h, "x-probe", tc.probe)
			if rec.Code != tc.want {
				t.Fatalf("status %d, want %d; body %q; log:\n%s", rec.Code, tc.want, rec.Body, logs)
			}
			if tc.want == 200 && rec.Header().Get("X-Upstream") != "yes" {
				t.Errorf("fail-open response did not come from the upstream: %v", rec.Header())
			}
			if tc.probe == "deny" && rec.Body.String() != "denied by probe\n" {
				t.Errorf("local response body %q", rec.Body)
			}
			if !strings.Contains(logs.String(), tc.wantLog) {
				t.Errorf("log lacks %q:\n%s", tc.wantLog, logs)
			}
			// The host still serves: a fresh instance replaces the broken one.
			for range 2 {
				if rec := do(t, h); rec.Code != 200 || rec.Header().Get("X-Upstream") != "yes" {
					t.Fatalf("ordinary request after %s: %d %q", tc.probe, rec.Code, rec.Body)
				}
			}
		})
	}
}

func TestRequestMutationsReachUpstream(t *testing.T) {
	p, _ := newPlugin(t, PluginConfig{Module: customHeader(t), RootID: "add_header"})
	var seen *http.Request
	h := p.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { seen = r }))
	do(t, h, "X-In", "1")
	if seen == nil || seen.Header.Get("X-In") != "1" || seen.URL.RequestURI() != "/details/123?x=1" {
		t.Fatalf("upstream saw %+v", seen)
	}
}

// TestContentLength: Envoy keeps an upstream's Content-Length through a filter with a body
// callback unless the body changes; HEAD responses keep theirs and run no body callback; the
// chunk that completes the declared length carries end_of_stream.
func TestContentLength(t *testing.T) {
	p, logs := newPlugin(t, PluginConfig{Module: probe(t), LogLevel: LogDebug})
	upstream := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("chunked") == "" {
			w.Header().Set("Content-Length", "12")
		}
		if r.Method != http.MethodHead {
			_, _ = io.WriteString(w, "details: ")
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, "123")
		}
	})
	srv := httptest.NewServer(p.Wrap(flushable(upstream)))
	defer srv.Close()
	cases := []struct {
		name, method, path, mode string
		length                   int64
		chunked                  bool
		body                     string
	}{
		{"unchanged body keeps it", "GET", "/", "", 12, false, "details: 123"},
		{"HEAD keeps it", "HEAD", "/", "", 12, false, ""},
		{"changed body gets the new length", "GET", "/", "append-body", 13, false, "details: 123!"},
		{"HEAD with a body-changing filter", "HEAD", "/", "append-body", 12, false, ""},
		{"no length stays chunked", "GET", "/?chunked=1", "append-body", -1, true, "details: 123!"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest(c.method, srv.URL+c.path, nil)
			req.Header.Set("x-probe", c.mode)
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 || string(b) != c.body {
				t.Fatalf("%d %q %v; log: %s", resp.StatusCode, b, err, logs)
			}
			if resp.ContentLength != c.length || (len(resp.TransferEncoding) > 0) != c.chunked {
				t.Errorf("Content-Length %d, transfer encoding %v; want %d, chunked %v", resp.ContentLength, resp.TransferEncoding, c.length, c.chunked)
			}
		})
	}
}

// flushable lets a handler flush through a writer that may not implement http.Flusher.
func flushable(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := w.(http.Flusher); !ok {
			w = struct {
				http.ResponseWriter
				http.Flusher
			}{w, noFlush{}}
		}
		h.ServeHTTP(w, r)
	})
}

type noFlush struct{}

func (noFlush) Flush() {}
