package wasmhost

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"wasme.io/wasme/internal/testing/wasmbuild"
)

// TestAssemblyScriptSeedFilter runs the seed's add-header filter as the original wasme's
// AssemblyScript SDK builds it (@solo-io/proxy-runtime 0.1.1, assemblyscript 0.9.1, ABI
// 0.1.0, wasi_unstable.proc_exit as its abort): with and without configuration, for GET and
// HEAD. Its proxy_on_response_body export must not cost the response its Content-Length.
func TestAssemblyScriptSeedFilter(t *testing.T) {
	module := wasmbuild.AssemblyScriptT(t)
	info, err := CheckModule(context.Background(), module)
	if err != nil || info.ABI != "0.1.0" {
		t.Fatalf("CheckModule: %+v %v", info, err)
	}
	upstream := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "12")
		if r.Method != http.MethodHead {
			_, _ = io.WriteString(w, "details: 123")
		}
	})
	for _, tc := range []struct {
		name, config, want string
	}{
		{"no config", "", "world!"},
		{"config", "bar", "bar"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := validate(context.Background(), module, "add_header", []byte(tc.config), testCache()); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			p, logs := newPlugin(t, PluginConfig{Module: module, RootID: "add_header", Configuration: []byte(tc.config)})
			srv := httptest.NewServer(p.Wrap(upstream))
			defer srv.Close()
			for _, method := range []string{"GET", "HEAD", "GET"} {
				req, _ := http.NewRequest(method, srv.URL+"/details/123", nil)
				resp, err := srv.Client().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || resp.Header.Get("Hello") != tc.want {
					t.Fatalf("%s: %d, hello %q, want %q; log: %s", method, resp.StatusCode, resp.Header.Get("Hello"), tc.want, logs)
				}
				if resp.ContentLength != 12 || len(resp.TransferEncoding) != 0 {
					t.Errorf("%s: Content-Length %d, transfer encoding %v: want the upstream's 12, unchunked", method, resp.ContentLength, resp.TransferEncoding)
				}
				if want := map[string]string{"GET": "details: 123", "HEAD": ""}[method]; string(body) != want {
					t.Errorf("%s: body %q", method, body)
				}
			}
			if strings.Contains(logs.String(), "level=ERROR") {
				t.Errorf("errors logged: %s", logs)
			}
		})
	}
}
