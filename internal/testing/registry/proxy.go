package registry

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
)

// Fault decides, per request, whether to answer it itself (return true) instead of passing it
// to the registry. It may also wrap the response writer through Proxy.Modify.
type Fault func(w http.ResponseWriter, r *http.Request) bool

// Proxy is a plain-HTTP reverse proxy in front of a registry, for injected faults only.
type Proxy struct {
	// Host is the proxy's "127.0.0.1:port".
	Host string

	mu     sync.Mutex
	fault  Fault
	modify func(r *http.Request, resp *http.Response) error
}

// NewProxy starts a proxy to reg (which must not use TLS) and closes it when the test ends.
func NewProxy(t testing.TB, reg *Registry) *Proxy {
	t.Helper()
	u, err := url.Parse(reg.URL())
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(resp *http.Response) error {
		p.mu.Lock()
		m := p.modify
		p.mu.Unlock()
		if m != nil {
			return m(resp.Request, resp)
		}
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		f := p.fault
		p.mu.Unlock()
		if f != nil && f(w, r) {
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.Host = srv.Listener.Addr().String()
	return p
}

// SetFault installs (or with nil removes) the request hook.
func (p *Proxy) SetFault(f Fault) {
	p.mu.Lock()
	p.fault = f
	p.mu.Unlock()
}

// SetModify installs (or with nil removes) a hook that may rewrite the registry's responses.
func (p *Proxy) SetModify(m func(r *http.Request, resp *http.Response) error) {
	p.mu.Lock()
	p.modify = m
	p.mu.Unlock()
}
