package nodecache

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/cacheprotocol"
	"wasme.io/wasme/internal/testing/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild())
	}
	os.Exit(testenv.Main(m, &env))
}

// wasmModule makes distinct module bytes that start with the Wasm magic number.
func wasmModule(name string) []byte {
	return append([]byte("\x00asm\x01\x00\x00\x00"), []byte(strings.Repeat("module "+name+" ", 512))...)
}

func hexOf(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// operator is the real module server with modules Put into it, as the operator does, behind a
// handler that counts fetches per node and can inject faults between it and the nodes.
type operator struct {
	srv       *cacheprotocol.Server
	url       string
	tokenFile string
	caFile    string
	ns        string

	mu      sync.Mutex
	fetches map[string]int // "<node> <hex>" -> successful GETs
	fault   func(w http.ResponseWriter, r *http.Request) bool
}

func startOperator(t *testing.T) *operator {
	t.Helper()
	ns := env.Namespace(t)
	startModuleSetController(t)
	op := &operator{ns: ns, fetches: map[string]int{}}
	op.tokenFile = filepath.Join(t.TempDir(), "token")
	writeToken(t, op.tokenFile, serviceAccountToken(t, ns, "wasme-cache"))
	var err error
	op.srv, err = cacheprotocol.New(cacheprotocol.Options{
		Client:        env.IndexedReader(t, cacheprotocol.IndexFilterDeployments),
		Authenticator: cacheprotocol.NewTokenReviewAuthenticator(env.Client, time.Minute, cacheprotocol.Audience),
		AllowedUsers:  []string{"system:serviceaccount:" + ns + ":wasme-cache"},
		Registerer:    prometheus.NewRegistry(),
		// The daemons retry every few milliseconds here; the budget of rejections is
		// cacheprotocol's test, not this one's.
		RejectBurst: 1 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		op.mu.Lock()
		fault := op.fault
		op.mu.Unlock()
		if fault != nil && fault(w, r) {
			return
		}
		rec := &countingWriter{ResponseWriter: w, code: http.StatusOK}
		op.srv.ServeHTTP(rec, r)
		if rec.code == http.StatusOK && r.Method == http.MethodGet {
			op.mu.Lock()
			h, _ := cacheprotocol.DigestOf(r.URL.Path)
			node, _ := cacheprotocol.NodeOf(r.Header.Get("User-Agent"))
			op.fetches[node+" "+h]++
			op.mu.Unlock()
		}
	}))
	// Over TLS with a certificate as the operator makes one, verified by the daemons.
	serving := servingTLS(t)
	ts.TLS = serving.TLSConfig()
	ts.StartTLS()
	t.Cleanup(ts.Close)
	op.url = ts.URL
	op.caFile = filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(op.caFile, serving.CAPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return op
}

// servingTLS is a certificate for the module server's Service and its CA, made as the
// operator makes them into the Secret.
func servingTLS(t *testing.T) *cacheprotocol.ServingTLS {
	t.Helper()
	data, err := cacheprotocol.NewServingSecretData(cacheprotocol.ServiceDNSNames("wasme"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(data[corev1.TLSCertKey], data[corev1.TLSPrivateKeyKey])
	if err != nil {
		t.Fatal(err)
	}
	return &cacheprotocol.ServingTLS{Certificate: cert, CAPEM: data[cacheprotocol.CAKey]}
}

// clientOptions are a daemon's options of a client of op, as the DaemonSet gives them.
func (op *operator) clientOptions(node string) cacheprotocol.ClientOptions {
	return cacheprotocol.ClientOptions{
		URL: op.url, ServerName: cacheprotocol.ServerName("wasme"),
		TokenFile: op.tokenFile, CAFile: op.caFile, NodeName: node,
	}
}

func (op *operator) setFault(f func(w http.ResponseWriter, r *http.Request) bool) {
	op.mu.Lock()
	op.fault = f
	op.mu.Unlock()
}

func (op *operator) fetchCount(node, h string) int {
	op.mu.Lock()
	defer op.mu.Unlock()
	return op.fetches[node+" "+h]
}

func (op *operator) put(t *testing.T, module []byte) {
	t.Helper()
	if err := op.srv.Put("sha256:"+hexOf(module), module); err != nil {
		t.Fatal(err)
	}
}

func writeToken(t *testing.T, path, token string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
}

func serviceAccountToken(t *testing.T, ns, name string) string {
	t.Helper()
	ctx := context.Background()
	if err := env.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}); err != nil {
		t.Fatalf("creating ServiceAccount %s: %v", name, err)
	}
	// Of the module server's audience, as the DaemonSet's projected volume holds it.
	token, err := env.AudienceToken(ctx, ns, name, cacheprotocol.Audience)
	if err != nil {
		t.Fatal(err)
	}
	return token
}

// filterDeployment creates a FilterDeployment whose status names module, and deletes it when
// the test ends (envtest runs no namespace controller, so the namespace would keep it).
func filterDeployment(t *testing.T, ns, name string, module []byte) *wasmev1.FilterDeployment {
	t.Helper()
	ctx := context.Background()
	fd := &wasmev1.FilterDeployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: wasmev1.FilterDeploymentSpec{
			Filter: wasmev1.FilterSpec{Image: "registry.example.com/filters/" + name + ":v1"},
		},
	}
	if err := env.Client.Create(ctx, fd); err != nil {
		t.Fatalf("creating FilterDeployment %s: %v", name, err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), fd) })
	setModule(t, fd, module)
	return fd
}

// setModule sets status.moduleDigest as the operator does after resolving and pulling.
func setModule(t *testing.T, fd *wasmev1.FilterDeployment, module []byte) {
	t.Helper()
	fd.Status.ModuleDigest = "sha256:" + hexOf(module)
	fd.Status.ImageDigest = "sha256:" + strings.Repeat("0", 64)
	if err := env.Client.Status().Update(context.Background(), fd); err != nil {
		t.Fatalf("setting the module of FilterDeployment %s: %v", fd.Name, err)
	}
}

func createNode(t *testing.T, name string) *corev1.Node {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := env.Client.Create(context.Background(), n); err != nil {
		t.Fatalf("creating Node %s: %v", name, err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), n) })
	return n
}

// node is one simulated node: a daemon with its own name, directory and registry.
type node struct {
	name string
	dir  string
	d    *Daemon
	stop func() error
}

// startNode runs a daemon until the test ends (or stop is called). adjust changes its options;
// storeHook, if set, adjusts its store before it runs (fault injection).
func startNode(t *testing.T, op *operator, name, dir string, adjust func(*Options), storeHook func(*Store)) *node {
	t.Helper()
	src, err := cacheprotocol.NewClient(op.clientOptions(name))
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{
		Dir: dir, NodeName: name, Config: env.Config, Source: src, Addr: "127.0.0.1:0",
		MinRetry: 20 * time.Millisecond, MaxRetry: 200 * time.Millisecond,
		Log: testr.New(t),
	}
	if adjust != nil {
		adjust(&opts)
	}
	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	d.storeHook = storeHook
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("daemon %s: %v", name, err)
		}
		_ = env.Client.Delete(context.Background(), &wasmev1.NodeCache{ObjectMeta: metav1.ObjectMeta{Name: name}})
	})
	return &node{name: name, dir: dir, d: d, stop: stop}
}

// waitFor polls cond until it holds; the deadline only bounds a broken test.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last state: %s", what, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func getNodeCache(name string) (*wasmev1.NodeCache, error) {
	var nc wasmev1.NodeCache
	err := env.Client.Get(context.Background(), client.ObjectKey{Name: name}, &nc)
	return &nc, err
}

// moduleState returns a module's reported state in NodeCache/<node>, and whether the node
// reports Ready=True.
func moduleState(name, h string) (state wasmev1.ModuleState, message string, ready bool, err error) {
	nc, err := getNodeCache(name)
	if err != nil {
		return "", "", false, err
	}
	for _, c := range nc.Status.Conditions {
		ready = ready || (c.Type == wasmev1.ReadyCondition && c.Status == metav1.ConditionTrue)
	}
	for _, m := range nc.Status.Modules {
		if m.Digest == "sha256:"+h {
			return m.State, m.Message, ready, nil
		}
	}
	return "", "", ready, nil
}

// waitModule waits until node reports the module in want state (and Ready=True), returning the
// message.
func waitModule(t *testing.T, nodeName, h string, want wasmev1.ModuleState) string {
	t.Helper()
	var msg string
	waitFor(t, fmt.Sprintf("%s to report %s for %.12s", nodeName, want, h), func() (bool, string) {
		st, m, ready, err := moduleState(nodeName, h)
		msg = m
		return err == nil && ready && st == want, fmt.Sprintf("state %q message %q ready %v err %v", st, m, ready, err)
	})
	return msg
}

// waitGone waits until node no longer lists the module.
func waitGone(t *testing.T, nodeName, h string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s to drop %.12s", nodeName, h), func() (bool, string) {
		st, _, _, err := moduleState(nodeName, h)
		return err == nil && st == "", fmt.Sprintf("state %q err %v", st, err)
	})
}

// get does one HTTP request against a daemon.
func get(t *testing.T, method, url string, header map[string]string) (int, []byte, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
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

// metricValue scrapes a daemon's /metrics for one sample line ("name{labels}").
func metricValue(t *testing.T, n *node, sample string) string {
	t.Helper()
	_, body, _ := get(t, "GET", "http://"+n.d.Addr()+"/metrics", nil)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			return v
		}
	}
	return ""
}
