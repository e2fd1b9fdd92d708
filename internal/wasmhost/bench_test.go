package wasmhost

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkWrap measures the filter's cost per request without any network: the same handler
// called directly and behind custom-header.
func BenchmarkWrap(b *testing.B) {
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok")) })
	p, _ := newPlugin(b, PluginConfig{Module: customHeader(b), RootID: "add_header", PoolSize: 1})
	for _, bc := range []struct {
		name string
		h    http.Handler
	}{{"no-filter", next}, {"custom-header", p.Wrap(next)}} {
		b.Run(bc.name, func(b *testing.B) {
			req := httptest.NewRequest("GET", "/details/123", nil)
			b.ReportAllocs()
			for b.Loop() {
				rec := httptest.NewRecorder()
				bc.h.ServeHTTP(rec, req)
				if rec.Code != 200 {
					b.Fatal(rec.Code)
				}
			}
		})
	}
}
