// Package e2e runs the seed walkthrough against a real local control plane
// (internal/testing/localcluster): kube-apiserver and etcd, a real istiod, the distribution registry, the wasme
// operator and node caches, and a test proxy (internal/testing/xdsproxy) standing in for the
// details-v1 sidecar's Envoy. See docs/e2e.md.
package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"wasme.io/wasme/internal/validation"

	"wasme.io/wasme/internal/testing/localcluster"
	"wasme.io/wasme/internal/testing/wasmbuild"
	"wasme.io/wasme/internal/testing/xdsproxy"
)

// cluster is shared by the tests of this package: starting istiod and the API server once
// keeps `make test` fast. Tests use their own EnvoyFilters/FilterDeployments and clean up.
var cluster *localcluster.Cluster

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	validation.ServeChildIfAsked() // the operator's validation children are this binary
	flag.Parse()
	if testing.Short() {
		fmt.Println("e2e: skipped in -short mode (it starts kube-apiserver, etcd, istiod and a registry)")
		return 0
	}
	ctx := context.Background()
	// WASME_E2E_DIR keeps the logs (istiod, operator, node caches) after the run, for debugging.
	c, err := localcluster.Start(ctx, localcluster.Options{
		Progress: os.Stderr, Dir: os.Getenv("WASME_E2E_DIR"),
		// Two nodes: the operator must wait for every node's cache, which the original could not.
		Nodes: 2,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: starting the local cluster:", err)
		return 1
	}
	defer c.Stop()
	if err := c.DeployBookinfo(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	// istiod's proxy state every second: the tests wait on it (the default is 10 s).
	if err := c.StartWasme(ctx, localcluster.WasmeOptions{ProxyStatusInterval: time.Second}); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	cluster = c
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "e2e: istiod log tail:\n%s\n", c.Istiod.LogTail(60))
	}
	return code
}

var (
	moduleOnce sync.Once
	module     []byte
	moduleErr  error
)

// customHeader is the seed's filter (root id add_header, adds hello: world!), built from
// examples/filters/custom-header.
func customHeader(t *testing.T) []byte {
	t.Helper()
	moduleOnce.Do(func() { module, moduleErr = wasmbuild.Example("custom-header") })
	if moduleErr != nil {
		t.Fatal(moduleErr)
	}
	return module
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// upstream is the application behind the sidecar: details answers 200 with a JSON body.
var upstream = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, `{"id":123,"author":"William Shakespeare"}`)
})

// sidecar starts the details-v1 test proxy for one test.
func sidecar(t *testing.T) *xdsproxy.Proxy {
	t.Helper()
	ctx := context.Background()
	p, err := cluster.StartSidecar(ctx, localcluster.BookinfoNamespace, "details-v1", localcluster.SidecarOptions{
		Upstream: upstream,
		Log:      slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	// The first listener push: from here on, every change is an update of a live proxy.
	waitChain(t, p, "the first listener push", func(*xdsproxy.Chain) bool { return true })
	return p
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// waitChain waits until the proxy runs a chain for which cond holds.
func waitChain(t *testing.T, p *xdsproxy.Proxy, what string, cond func(*xdsproxy.Chain) bool) *xdsproxy.Chain {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c, err := p.WaitFor(ctx, cond)
	if err != nil {
		t.Fatalf("waiting for %s: %v; current chain: %s", what, err, describe(c))
	}
	return c
}

func describe(c *xdsproxy.Chain) string {
	if c == nil {
		return "none"
	}
	var w []string
	for _, f := range c.Wasm {
		w = append(w, fmt.Sprintf("%s(root %q, config %q)", f.Name, f.RootID, f.Configuration))
	}
	return fmt.Sprintf("listener %s chain %s, HTTP filters %v, Wasm %v", c.Listener, c.FilterChain, c.HTTPFilters, w)
}

// get sends GET /details/123 through the proxy, as the seed's curl does, and returns the
// response headers.
func get(t *testing.T, p *xdsproxy.Proxy) http.Header {
	t.Helper()
	resp, err := http.Get(p.URL() + "/details/123")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /details/123: %s: %s", resp.Status, body)
	}
	return resp.Header
}

// writeModule puts a module into every node's cache directory, as the node caches would for
// tests that write EnvoyFilters themselves.
func writeModule(t *testing.T, mod []byte) string {
	t.Helper()
	h := sha256Hex(mod)
	for _, n := range cluster.Nodes {
		if err := os.WriteFile(filepath.Join(n.CacheDir, h), mod, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return h
}
