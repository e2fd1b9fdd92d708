package cacheprotocol_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/cacheprotocol"
	"wasme.io/wasme/internal/testing/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &env)) }

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// serviceAccountToken creates a ServiceAccount and returns a token for it of the module
// server's audience, from the TokenRequest API.
func serviceAccountToken(t *testing.T, ns, name string) string {
	t.Helper()
	ctx := context.Background()
	if err := env.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}); err != nil {
		t.Fatalf("creating ServiceAccount %s: %v", name, err)
	}
	token, err := env.AudienceToken(ctx, ns, name, cacheprotocol.Audience)
	if err != nil {
		t.Fatal(err)
	}
	return token
}

// apiServerToken is a token of an existing ServiceAccount for the API server's own audience,
// as every pod has one mounted by default.
func apiServerToken(t *testing.T, ns, name string) string {
	t.Helper()
	_, token, err := env.ServiceAccountConfig(context.Background(), ns, name)
	if err != nil {
		t.Fatal(err)
	}
	return token
}

// filterDeployment creates a FilterDeployment whose status names moduleDigest.
func filterDeployment(t *testing.T, ns, name, moduleDigest string) *wasmev1.FilterDeployment {
	t.Helper()
	ctx := context.Background()
	fd := &wasmev1.FilterDeployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: wasmev1.FilterDeploymentSpec{
			Filter:     wasmev1.FilterSpec{Image: "registry.example.com/filters/" + name + ":v1"},
			Deployment: wasmev1.DeploymentSpec{Istio: wasmev1.IstioDeploymentSpec{}},
		},
	}
	if err := env.Client.Create(ctx, fd); err != nil {
		t.Fatalf("creating FilterDeployment %s: %v", name, err)
	}
	fd.Status.ModuleDigest = moduleDigest
	fd.Status.ImageDigest = "sha256:" + strings.Repeat("0", 64)
	if err := env.Client.Status().Update(ctx, fd); err != nil {
		t.Fatalf("setting the status of FilterDeployment %s: %v", name, err)
	}
	return fd
}

func TestServer(t *testing.T) {
	ns := env.Namespace(t)
	goodToken := serviceAccountToken(t, ns, "wasme-cache")
	otherToken := serviceAccountToken(t, ns, "intruder")
	apiToken := apiServerToken(t, ns, "wasme-cache")

	held := []byte("\x00asm\x01\x00\x00\x00 the held module")
	fetched := []byte("\x00asm\x01\x00\x00\x00 a module only the registry has")
	tampered := []byte("\x00asm\x01\x00\x00\x00 what the FilterDeployment names")
	unused := []byte("\x00asm\x01\x00\x00\x00 put, but no FilterDeployment names it")
	filterDeployment(t, ns, "held", digestOf(held))
	filterDeployment(t, ns, "fetched", digestOf(fetched))
	filterDeployment(t, ns, "tampered", digestOf(tampered))
	// Mid-rollout: the EnvoyFilters still load the deployed module while the new one caches.
	deployed := []byte("\x00asm\x01\x00\x00\x00 the module Envoy loads now")
	deployedGone := []byte("\x00asm\x01\x00\x00\x00 deployed, but this replica never pulled it")
	rolling := filterDeployment(t, ns, "rolling", digestOf(held))
	rolling.Status.DeployedModuleDigest = digestOf(deployed)
	if err := env.Client.Status().Update(context.Background(), rolling); err != nil {
		t.Fatal(err)
	}
	rolling2 := filterDeployment(t, ns, "rolling-2", digestOf(held))
	rolling2.Status.DeployedModuleDigest = digestOf(deployedGone)
	if err := env.Client.Status().Update(context.Background(), rolling2); err != nil {
		t.Fatal(err)
	}

	var fetches sync.Map // FilterDeployment name -> *atomic.Int32
	release := make(chan struct{})
	srv, err := cacheprotocol.New(cacheprotocol.Options{
		Client:        env.IndexedReader(t, cacheprotocol.IndexFilterDeployments),
		Authenticator: cacheprotocol.NewTokenReviewAuthenticator(env.Client, 0, ""),
		AllowedUsers:  []string{"system:serviceaccount:" + ns + ":wasme-cache"},
		Registerer:    prometheus.NewRegistry(),
		Fetch: func(ctx context.Context, fd *wasmev1.FilterDeployment) ([]byte, error) {
			n, _ := fetches.LoadOrStore(fd.Name, new(atomic.Int32))
			n.(*atomic.Int32).Add(1)
			switch fd.Name {
			case "fetched":
				// Held back until every concurrent request has arrived, so singleflight is what
				// keeps the count at one.
				<-release
				return fetched, nil
			case "tampered":
				return []byte("\x00asm\x01\x00\x00\x00 something else"), nil
			}
			return nil, fmt.Errorf("unexpected fetch for %s", fd.Name)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Put(digestOf(held), held); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if err := srv.Put(digestOf(unused), unused); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if err := srv.Put(digestOf(deployed), deployed); err != nil {
		t.Fatalf("Put: %v", err)
	}
	ts := httptest.NewServer(srv)
	defer ts.Close()

	path := func(b []byte) string { return cacheprotocol.ModulePath(strings.TrimPrefix(digestOf(b), "sha256:")) }
	tests := []struct {
		name       string
		method     string
		path       string
		token      string
		header     map[string]string
		wantCode   int
		wantBody   []byte
		wantHeader map[string]string
	}{
		{name: "no token", method: "GET", path: path(held), wantCode: 401},
		{name: "garbage token", method: "GET", path: path(held), token: "not-a-token", wantCode: 401},
		{name: "the API server's audience", method: "GET", path: path(held), token: apiToken, wantCode: 401},
		{name: "oversize token", method: "GET", path: path(held), token: strings.Repeat("a", cacheprotocol.MaxTokenBytes+1), wantCode: 401},
		{name: "other ServiceAccount", method: "GET", path: path(held), token: otherToken, wantCode: 403},
		{name: "other ServiceAccount, unknown digest", method: "GET", path: path([]byte("x")), token: otherToken, wantCode: 403},
		{name: "held module", method: "GET", path: path(held), token: goodToken, wantCode: 200, wantBody: held,
			wantHeader: map[string]string{"ETag": `"` + digestOf(held) + `"`, "Content-Type": "application/wasm", "Content-Length": fmt.Sprint(len(held))}},
		{name: "HEAD", method: "HEAD", path: path(held), token: goodToken, wantCode: 200, wantBody: []byte{},
			wantHeader: map[string]string{"Content-Length": fmt.Sprint(len(held))}},
		{name: "range", method: "GET", path: path(held), token: goodToken, header: map[string]string{"Range": "bytes=0-3"},
			wantCode: 206, wantBody: []byte("\x00asm")},
		{name: "conditional", method: "GET", path: path(held), token: goodToken,
			header: map[string]string{"If-None-Match": `"` + digestOf(held) + `"`}, wantCode: 304},
		{name: "unknown digest", method: "GET", path: path([]byte("nobody's")), token: goodToken, wantCode: 404},
		{name: "put but unused", method: "GET", path: path(unused), token: goodToken, wantCode: 404},
		{name: "deployed module, held", method: "GET", path: path(deployed), token: goodToken, wantCode: 200, wantBody: deployed},
		{name: "deployed module, not held (no image leads to it)", method: "GET", path: path(deployedGone), token: goodToken, wantCode: 404},
		{name: "tampered upstream", method: "GET", path: path(tampered), token: goodToken, wantCode: 502},
		{name: "malformed digest", method: "GET", path: cacheprotocol.PathPrefix + "abc", token: goodToken, wantCode: 400},
		{name: "upper-case digest", method: "GET", path: cacheprotocol.PathPrefix + strings.ToUpper(strings.TrimPrefix(digestOf(held), "sha256:")), token: goodToken, wantCode: 400},
		{name: "traversal", method: "GET", path: cacheprotocol.PathPrefix + "../../../etc/passwd", token: goodToken, wantCode: 400},
		{name: "reference instead of digest", method: "GET", path: "/registry.example.com/filters/held:v1", token: goodToken, wantCode: 404},
		{name: "POST", method: "POST", path: path(held), token: goodToken, wantCode: 405},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body, hdr := do(t, ts.URL, tc.method, tc.path, tc.token, tc.header)
			if code != tc.wantCode {
				t.Fatalf("status %d, want %d; body %q", code, tc.wantCode, body)
			}
			if tc.wantBody != nil && string(body) != string(tc.wantBody) {
				t.Errorf("body %q, want %q", body, tc.wantBody)
			}
			for k, v := range tc.wantHeader {
				if got := hdr.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
		})
	}

	if srv.Has(digestOf(tampered)) {
		t.Error("the tampered module was stored")
	}

	t.Run("fallback fetch, once for concurrent callers", func(t *testing.T) {
		const callers = 8
		var wg sync.WaitGroup
		results := make([]string, callers)
		for i := range callers {
			wg.Go(func() {
				code, body, _ := do(t, ts.URL, "GET", path(fetched), goodToken, nil)
				results[i] = fmt.Sprintf("%d %s", code, body)
			})
		}
		// The callers wait in the singleflight while Fetch is held back; let it go once the
		// first one has called Fetch (the others join it or find the stored module).
		waitFor(t, func() bool { n, ok := fetches.Load("fetched"); return ok && n.(*atomic.Int32).Load() > 0 })
		close(release)
		wg.Wait()
		for i, r := range results {
			if want := "200 " + string(fetched); r != want {
				t.Errorf("caller %d got %q, want %q", i, r, want)
			}
		}
		n, _ := fetches.Load("fetched")
		if got := n.(*atomic.Int32).Load(); got != 1 {
			t.Errorf("Fetch called %d times for %d concurrent callers, want 1", got, callers)
		}
		if !srv.Has(digestOf(fetched)) {
			t.Error("the fetched module was not kept")
		}
	})
}

func do(t *testing.T, base, method, path, token string, header map[string]string) (int, []byte, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body, resp.Header
}

// waitFor waits until cond holds; the deadline only bounds a broken test.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 30s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestNewRefusesIncompleteOptions(t *testing.T) {
	tests := []struct {
		name string
		opts cacheprotocol.Options
		want string
	}{
		{"no client", cacheprotocol.Options{Authenticator: cacheprotocol.NewTokenReviewAuthenticator(env.Client, 0, "")}, "Client is required"},
		{"no authenticator", cacheprotocol.Options{Client: env.Client}, "Authenticator is required"},
		{"negative limit", cacheprotocol.Options{Client: env.Client, Authenticator: cacheprotocol.NewTokenReviewAuthenticator(env.Client, 0, ""), MaxStoreBytes: -1}, "must not be negative"},
		{"negative reject burst", cacheprotocol.Options{Client: env.Client, Authenticator: cacheprotocol.NewTokenReviewAuthenticator(env.Client, 0, ""), RejectBurst: -1}, "must not be negative"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cacheprotocol.New(tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestPut(t *testing.T) {
	srv, err := cacheprotocol.New(cacheprotocol.Options{
		Client: env.IndexedReader(t, cacheprotocol.IndexFilterDeployments), Authenticator: cacheprotocol.NewTokenReviewAuthenticator(env.Client, 0, ""),
		Registerer: prometheus.NewRegistry(), MaxModuleBytes: 16,
	})
	if err != nil {
		t.Fatal(err)
	}
	small := []byte("\x00asm\x01\x00\x00\x00")
	tests := []struct {
		name   string
		digest string
		data   []byte
		want   string
	}{
		{"matching", digestOf(small), small, ""},
		{"mismatch", digestOf([]byte("other")), small, "have digest"},
		{"no algorithm", strings.TrimPrefix(digestOf(small), "sha256:"), small, "malformed module digest"},
		{"too large", digestOf(make([]byte, 17)), make([]byte, 17), "more than the limit"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := srv.Put(tc.digest, tc.data)
			if tc.want == "" {
				if err != nil || !srv.Has(tc.digest) {
					t.Fatalf("Put: %v, Has: %v", err, srv.Has(tc.digest))
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Put: %v, want an error containing %q", err, tc.want)
			}
			if srv.Has(tc.digest) {
				t.Fatal("a refused module is held")
			}
		})
	}
}

func TestStoreEvictsLeastRecentlyUsed(t *testing.T) {
	s := cacheprotocol.NewStore(10)
	a, b, c := []byte("aaaa"), []byte("bbbb"), []byte("cccc")
	hexOf := func(x []byte) string { return strings.TrimPrefix(digestOf(x), "sha256:") }
	for _, x := range [][]byte{a, b} {
		if err := s.Put(hexOf(x), x); err != nil {
			t.Fatal(err)
		}
	}
	s.Get(hexOf(a)) // a is now more recent than b
	if err := s.Put(hexOf(c), c); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		data []byte
		want bool
	}{{"a, used", a, true}, {"b, least recent", b, false}, {"c, new", c, true}} {
		if got := s.Has(hexOf(tc.data)); got != tc.want {
			t.Errorf("%s: Has = %v, want %v", tc.name, got, tc.want)
		}
	}
	if n, size := s.Len(); n != 2 || size != 8 {
		t.Errorf("Len = %d, %d; want 2, 8", n, size)
	}
	if err := s.Put(hexOf(make([]byte, 11)), make([]byte, 11)); err == nil {
		t.Error("a module larger than the store was accepted")
	}
}
