package nodecache

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	wasmev1 "wasme.io/wasme/api/v1"
)

func TestServe(t *testing.T) {
	op := startOperator(t)
	mod := wasmModule("served")
	op.put(t, mod)
	filterDeployment(t, op.ns, "served", mod)
	n := startNode(t, op, "serve-1", t.TempDir(), nil, nil)
	waitModule(t, n.name, hexOf(mod), wasmev1.ModuleReady)
	base := "http://" + n.d.Addr()
	h := hexOf(mod)
	etag := `"sha256:` + h + `"`

	tests := []struct {
		name       string
		method     string
		path       string
		header     map[string]string
		wantCode   int
		wantBody   []byte
		wantHeader map[string]string
	}{
		{name: "by sha256 path", method: "GET", path: "/sha256/" + h, wantCode: 200, wantBody: mod,
			wantHeader: map[string]string{"ETag": etag, "Content-Length": fmt.Sprint(len(mod)), "Content-Type": "application/wasm"}},
		{name: "original's path", method: "GET", path: "/" + h, wantCode: 200, wantBody: mod},
		{name: "HEAD", method: "HEAD", path: "/sha256/" + h, wantCode: 200, wantBody: []byte{},
			wantHeader: map[string]string{"Content-Length": fmt.Sprint(len(mod)), "ETag": etag}},
		{name: "range", method: "GET", path: "/sha256/" + h, header: map[string]string{"Range": "bytes=4-7"},
			wantCode: 206, wantBody: mod[4:8], wantHeader: map[string]string{"Content-Range": fmt.Sprintf("bytes 4-7/%d", len(mod))}},
		{name: "if-none-match", method: "GET", path: "/sha256/" + h, header: map[string]string{"If-None-Match": etag}, wantCode: 304},
		{name: "unknown digest", method: "GET", path: "/sha256/" + strings.Repeat("ab", 32), wantCode: 404},
		{name: "unknown digest, original's path", method: "GET", path: "/" + strings.Repeat("0", 64), wantCode: 404},
		{name: "short digest", method: "GET", path: "/sha256/abc", wantCode: 400},
		{name: "upper-case digest", method: "GET", path: "/sha256/" + strings.ToUpper(h), wantCode: 400},
		{name: "image reference (the original pulled these)", method: "GET", path: "/registry.example.com/filters/x:v1", wantCode: 400},
		{name: "root", method: "GET", path: "/", wantCode: 400},
		{name: "POST", method: "POST", path: "/sha256/" + h, wantCode: 405},
		{name: "healthz", method: "GET", path: "/healthz", wantCode: 200},
		{name: "readyz", method: "GET", path: "/readyz", wantCode: 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body, hdr := get(t, tc.method, base+tc.path, tc.header)
			if code != tc.wantCode {
				t.Fatalf("status %d, want %d; body %.200q", code, tc.wantCode, body)
			}
			if tc.wantBody != nil && !bytes.Equal(body, tc.wantBody) {
				t.Errorf("body %.100q, want %.100q", body, tc.wantBody)
			}
			for k, v := range tc.wantHeader {
				if got := hdr.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
		})
	}

	// Path traversal sent raw, as a hostile client would, without Go's client cleaning it.
	for _, raw := range []string{"/../../../etc/passwd", "/sha256/../../etc/passwd", "/sha256/..%2f..%2fetc%2fpasswd", "/%2e%2e/" + h} {
		t.Run("traversal "+raw, func(t *testing.T) {
			status := rawGet(t, n.d.Addr(), raw)
			if !strings.Contains(status, " 400 ") {
				t.Fatalf("GET %s answered %q, want 400", raw, status)
			}
		})
	}

	t.Run("metrics", func(t *testing.T) {
		for sample, want := range map[string]string{
			"wasme_cache_modules":                         "1",
			"wasme_cache_bytes":                           fmt.Sprint(len(mod)),
			`wasme_cache_fetches_total{result="success"}`: "1",
			`wasme_cache_serves_total{code="404"}`:        "2",
			"wasme_cache_fetch_duration_seconds_count":    "1",
		} {
			if got := metricValue(t, n, sample); got != want {
				t.Errorf("%s = %q, want %q", sample, got, want)
			}
		}
	})

	// A module written again (as after a corrupt copy was found) replaces the file by rename;
	// readers in flight always get a whole, correct module.
	t.Run("concurrent readers during replacement", func(t *testing.T) {
		var wg sync.WaitGroup
		stop := make(chan struct{})
		errs := make(chan string, 100)
		for range 4 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					resp, err := http.Get(base + "/sha256/" + h)
					if err != nil {
						errs <- err.Error()
						return
					}
					var buf bytes.Buffer
					_, err = buf.ReadFrom(resp.Body)
					resp.Body.Close()
					if err != nil || resp.StatusCode != 200 || !bytes.Equal(buf.Bytes(), mod) {
						errs <- fmt.Sprintf("status %d, %d bytes, err %v", resp.StatusCode, buf.Len(), err)
						return
					}
				}
			})
		}
		for range 50 {
			if _, err := n.d.store.Write(h, bytes.NewReader(mod), int64(len(mod))); err != nil {
				t.Error(err)
				break
			}
		}
		close(stop)
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Errorf("a reader saw a bad response: %s", e)
		}
	})
}

// rawGet sends a request line verbatim and returns the response's status line.
func rawGet(t *testing.T, addr, path string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, _ := c.Read(buf)
	line, _, _ := strings.Cut(string(buf[:n]), "\r\n")
	return line
}
