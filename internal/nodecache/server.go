package nodecache

import (
	"errors"
	"io"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	wasmev1 "wasme.io/wasme/api/v1"
)

// ServeHTTP serves the node's proxies and probes:
//
//	GET/HEAD /sha256/<hex> and /<hex>   a held module (ETag, Content-Length, Range)
//	GET /metrics, /healthz, /readyz
//
// Paths are matched exactly, never cleaned or joined onto the directory, and nothing is
// fetched on demand: a module not held is 404, anything else that is not a probe is 400.
func (d *Daemon) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/healthz":
		_, _ = w.Write([]byte("ok\n"))
		return
	case "/readyz":
		if !d.ready.Load() {
			http.Error(w, "not ready: the cache is starting or stopping", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
		return
	case "/metrics":
		promhttp.HandlerFor(d.opts.Registry, promhttp.HandlerOpts{}).ServeHTTP(w, r)
		return
	}
	code := d.serveModule(w, r)
	d.metrics.serves.WithLabelValues(strconv.Itoa(code)).Inc()
}

func (d *Daemon) serveModule(w http.ResponseWriter, r *http.Request) int {
	h, ok := strings.CutPrefix(r.URL.Path, "/sha256/")
	if !ok {
		h = strings.TrimPrefix(r.URL.Path, "/")
	}
	if !wasmev1.IsSHA256Hex(h) {
		http.Error(w, "malformed path: want /sha256/<64 lower-case hex characters> or /<64 lower-case hex characters>", http.StatusBadRequest)
		return http.StatusBadRequest
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "only GET and HEAD are served", http.StatusMethodNotAllowed)
		return http.StatusMethodNotAllowed
	}
	if d.store == nil {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
		return http.StatusServiceUnavailable
	}
	f, err := d.store.Open(h)
	if errors.Is(err, fs.ErrNotExist) {
		http.Error(w, "this node does not hold sha256:"+h, http.StatusNotFound)
		return http.StatusNotFound
	}
	if err != nil {
		d.opts.Log.Error(err, "opening a module", "digest", "sha256:"+h)
		http.Error(w, "cannot read the module", http.StatusInternalServerError)
		return http.StatusInternalServerError
	}
	defer f.Close() //nolint:errcheck // opened for reading
	w.Header().Set("Content-Type", "application/wasm")
	w.Header().Set("ETag", `"sha256:`+h+`"`)
	rec := &countingWriter{ResponseWriter: w, code: http.StatusOK}
	// A module's content never changes under its name, so no modification time is needed.
	http.ServeContent(rec, r, "", time.Time{}, f)
	d.metrics.servedBytes.Add(float64(rec.written))
	return rec.code
}

// countingWriter remembers the status code and body size for the metrics.
type countingWriter struct {
	http.ResponseWriter
	code    int
	written int64
}

func (c *countingWriter) WriteHeader(code int) {
	c.code = code
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.written += int64(n)
	return n, err
}

// ReadFrom keeps net/http's sendfile path open: without it, wrapping the response writer
// copies every module through a user-space buffer (0.6x nginx's rate in make bench).
func (c *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	n, err := io.Copy(c.ResponseWriter, r)
	c.written += n
	return n, err
}
