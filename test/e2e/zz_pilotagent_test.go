package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/istio"
	"wasme.io/wasme/internal/testing/localcluster"
)

// TestPilotAgentWithStandIn runs the real pilot-agent (the pinned Istio's) as details-v1's
// sidecar against the real istiod, with wasme's test proxy as the envoy it starts, in a
// network namespace where the real istio-iptables redirects traffic:
//   - the readiness endpoint (15021, the bootstrap's listener routing to the agent on 15020)
//     answers 503 while istiod is out of reach and 200 once configuration arrived;
//   - an EnvoyFilter with the seed's Wasm filter reaches the stand-in through istiod and the
//     agent's xDS proxy, and Debian's curl run as uid 1337 to the pod IP (redirected by the
//     rules to 15006, its original port 9080 picking the filter chain) gets the filter's header
//     on the application's answer; the application sees the proxy's bind address 127.0.0.6;
//   - SIGTERM to pilot-agent drains the stand-in's inbound listeners and both exit.
func TestPilotAgentWithStandIn(t *testing.T) {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "wasme-pilot-agent-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	var mu sync.Mutex
	var remotes []string
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		remotes = append(remotes, r.RemoteAddr)
		mu.Unlock()
		upstream.ServeHTTP(w, r)
	})
	a, err := cluster.StartPilotAgent(ctx, localcluster.BookinfoNamespace, "details-v1", localcluster.AgentOptions{
		Upstream: app, Dir: dir, NoIstiod: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	defer func() {
		if t.Failed() {
			t.Logf("pilot-agent and stand-in log (tail):\n%s", a.LogTail(80))
		}
	}()
	readyURL := fmt.Sprintf("http://%s:15021/healthz/ready", a.PodIP)
	ready := func(ctx context.Context) (int, error) {
		resp, _, err := a.Get(ctx, readyURL)
		if err != nil {
			return 0, err
		}
		return resp.StatusCode, nil
	}

	// Without istiod: the stand-in's 15021 listener answers through the agent, not ready.
	var code int
	poll(t, 60*time.Second, "the readiness listener to answer", func() bool {
		code, err = ready(ctx)
		return err == nil
	})
	if code != http.StatusServiceUnavailable {
		t.Fatalf("readiness before any configuration: %d, want 503", code)
	}
	if a.Exited() {
		t.Fatal("pilot-agent exited")
	}

	// With istiod: ready once CDS and LDS were accepted.
	if err := a.ConnectIstiod(); err != nil {
		t.Fatal(err)
	}
	poll(t, 90*time.Second, "readiness 200 after configuration", func() bool {
		code, err = ready(ctx)
		return err == nil && code == http.StatusOK
	})
	_, stats, err := a.Get(ctx, "http://127.0.0.1:15000/stats?usedonly&filter=^listener_manager.lds.update_success")
	if err != nil || !strings.Contains(string(stats), "listener_manager.lds.update_success: ") {
		t.Fatalf("admin stats after readiness: %v %s", err, stats)
	}

	// A Wasm filter through istiod: the module where the configuration names it.
	cacheDir := filepath.Join(dir, "wasme-cache")
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		t.Fatal(err)
	}
	mod := customHeader(t)
	sum := sha256Hex(mod)
	if err := os.WriteFile(filepath.Join(cacheDir, sum), mod, 0o644); err != nil {
		t.Fatal(err)
	}
	ef, err := istio.BuildEnvoyFilter(istio.Filter{
		Name: "standin", Namespace: localcluster.BookinfoNamespace,
		WorkloadLabels: map[string]string{"app": "details", "version": "v1"},
		ID:             "standin", RootID: "add_header", ModuleSHA256: sum, CacheDir: cacheDir,
		Config:  wasmev1.FilterConfig{TypeURL: wasmev1.StringValueType, Value: []byte(`{"name":"x-standin","value":"yes"}`)},
		Context: "SIDECAR_INBOUND", Shape: istio.TypedShape,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := cluster.Client.Create(ctx, ef); err != nil {
		t.Fatal(err)
	}
	// The EnvoyFilter selects details-v1, which the other tests' sidecars stand in for, and its
	// module exists only in this test's directory: it would be refused by their sidecars until
	// istiod pushes its removal. This file sorts last so that no test runs after it.
	t.Cleanup(func() { _ = cluster.Client.Delete(ctx, ef) })
	// curl as the proxy's uid, as the seed's kubectl exec -c istio-proxy does: istio-iptables
	// sends the proxy's own traffic to its pod IP back to the inbound listener (15006).
	appURL := fmt.Sprintf("http://%s:%d/details/123", a.PodIP, localcluster.BookinfoPort)
	var out string
	poll(t, 90*time.Second, "the Wasm filter's header on a request to the pod", func() bool {
		out, err = a.Exec(ctx, localcluster.ProxyUID, "curl", "-sS", "-i", "--max-time", "10", appURL)
		ok := err == nil && strings.Contains(strings.ToLower(out), "x-standin: yes")
		if !ok {
			t.Logf("curl %s: %v %.300s", appURL, err, out)
		}
		return ok
	})
	if !strings.HasPrefix(out, "HTTP/1.1 200") || !strings.Contains(out, "Shakespeare") {
		t.Fatalf("through the sidecar: %s", out)
	}
	mu.Lock()
	last := remotes[len(remotes)-1]
	mu.Unlock()
	if host, _, _ := net.SplitHostPort(last); host != "127.0.0.6" {
		t.Errorf("the application saw the request from %s, want the inbound cluster's bind address 127.0.0.6", last)
	}
	if !strings.Contains(a.Log(), "listener=virtualInbound") {
		t.Errorf("the stand-in never bound virtualInbound")
	}

	// SIGTERM: the agent drains the inbound listeners, then ends its envoy and exits.
	if err := a.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := a.Wait(wctx); err != nil {
		t.Fatalf("pilot-agent after SIGTERM: %v", err)
	}
	log := a.Log()
	for _, want := range []string{"draining listeners", "inboundOnly=true", "Graceful termination period"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q", want)
		}
	}
}

// poll calls cond until it holds, failing the test after timeout (a bound for a broken run,
// not a performance assertion).
func poll(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
