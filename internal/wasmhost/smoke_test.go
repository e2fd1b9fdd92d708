package wasmhost

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"wasme.io/wasme/internal/wasmhost/wasmtest"
)

func TestSmoke(t *testing.T) {
	ctx := context.Background()
	p, err := NewPlugin(ctx, PluginConfig{Module: wasmtest.Example(t, "custom-header"), RootID: "add_header", Name: "ch"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(ctx)
	h := p.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("hi")) }))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/x", nil))
	t.Logf("%d %v %q", rec.Code, rec.Header(), rec.Body.String())
}
