package wasmimage_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"wasme.io/wasme/internal/testing/registry"
	"wasme.io/wasme/pkg/wasmimage"
)

// authLog records the Authorization headers a server received.
type authLog struct {
	mu   sync.Mutex
	seen []string
}

func (l *authLog) add(r *http.Request) {
	l.mu.Lock()
	l.seen = append(l.seen, r.Method+" "+r.URL.Path+" auth="+r.Header.Get("Authorization"))
	l.mu.Unlock()
}

func (l *authLog) carried(secret string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.seen {
		if strings.Contains(s, secret) {
			return true
		}
	}
	return false
}

func (l *authLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.seen, "; ")
}

// realmRegistry puts a proxy in front of a real htpasswd registry whose first answer is a
// Bearer challenge naming realm (what a hostile or misconfigured registry can do).
func realmRegistry(t *testing.T, reg *registry.Registry, realm func(proxyHost string) string) *registry.Proxy {
	proxy := registry.NewProxy(t, reg)
	proxy.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
			r.Header.Del("Authorization") // the registry speaks Basic: let it answer 401
			return false
		}
		w.Header().Set("Www-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="registry",scope="repository:guard/tiny:pull"`, realm(proxy.Host)))
		w.WriteHeader(http.StatusUnauthorized)
		return true
	})
	return proxy
}

// TestCredentialsStayWithTheirHost: basic credentials never reach a second host, neither a
// token realm on another host (over plain HTTP the challenge could be anyone's) nor a
// registry they were not keyed for; a realm on the registry's own host does get them (the
// control that shows the realm path carries credentials at all).
func TestCredentialsStayWithTheirHost(t *testing.T) {
	ctx := context.Background()
	users := map[string]string{"alice": "s3cret-pw"}
	regA := registry.StartT(t, registry.Options{Users: users})
	basic := base64.StdEncoding.EncodeToString([]byte("alice:s3cret-pw"))

	t.Run("realm on another host", func(t *testing.T) {
		var realmLog authLog
		realmSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			realmLog.add(r)
			fmt.Fprint(w, `{"token":"from-the-realm"}`)
		}))
		defer realmSrv.Close()
		proxy := realmRegistry(t, regA, func(string) string { return realmSrv.URL + "/token" })
		_, err := wasmimage.Pull(ctx, proxy.Host+"/guard/tiny:v1", plain, wasmimage.WithCredentials("alice", "s3cret-pw"))
		if err == nil {
			t.Fatal("pull succeeded through a foreign realm")
		}
		if realmLog.carried(basic) || realmLog.carried("s3cret-pw") {
			t.Errorf("the realm on another host received the credentials: %s", &realmLog)
		}
		if !strings.Contains(realmLog.String(), "/token") {
			t.Errorf("the realm was never asked (test did not exercise the path): %q", &realmLog)
		}
	})

	t.Run("realm on the registry's own host", func(t *testing.T) {
		var own authLog
		proxy := realmRegistry(t, regA, func(h string) string { return "http://" + h + "/token" })
		fault := func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path == "/token" {
				own.add(r)
				fmt.Fprint(w, `{"token":"t"}`)
				return true
			}
			w.Header().Set("Www-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token"`, proxy.Host))
			w.WriteHeader(http.StatusUnauthorized)
			return true
		}
		proxy.SetFault(fault)
		_, _ = wasmimage.Pull(ctx, proxy.Host+"/guard/tiny:v1", plain, wasmimage.WithCredentials("alice", "s3cret-pw"))
		if !own.carried(basic) {
			t.Errorf("the registry's own realm did not get the credentials: %s", &own)
		}
	})

	t.Run("docker config keyed for another registry", func(t *testing.T) {
		regB := registry.StartT(t, registry.Options{Users: users})
		if _, err := wasmimage.Push(ctx, regB.Host+"/guard/tiny:v1", tiny, wasmimage.RuntimeConfig{}, plain,
			wasmimage.WithCredentials("alice", "s3cret-pw")); err != nil {
			t.Fatal(err)
		}
		var bLog authLog
		proxyB := registry.NewProxy(t, regB)
		proxyB.SetFault(func(_ http.ResponseWriter, r *http.Request) bool { bLog.add(r); return false })
		cfg := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, regA.Host, basic)
		_, err := wasmimage.Pull(ctx, proxyB.Host+"/guard/tiny:v1", plain, wasmimage.WithDockerConfigJSON([]byte(cfg)))
		if !errors.Is(err, wasmimage.ErrUnauthorized) {
			t.Errorf("err %v, want ErrUnauthorized", err)
		}
		if bLog.carried(basic) {
			t.Errorf("registry B received credentials keyed for A: %s", &bLog)
		}
		// Control: keyed for B, the same pull works.
		cfg = fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, proxyB.Host, basic)
		if _, err := wasmimage.Pull(ctx, proxyB.Host+"/guard/tiny:v1", plain, wasmimage.WithDockerConfigJSON([]byte(cfg))); err != nil {
			t.Errorf("credentials keyed for B: %v", err)
		}
	})
}
