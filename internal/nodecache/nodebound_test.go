package nodecache

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/testing/tools"
)

// grantCacheRole gives ServiceAccount ns/wasme-cache the node cache's shipped ClusterRole.
func grantCacheRole(t *testing.T, ns string) {
	t.Helper()
	ctx := context.Background()
	if err := env.ApplyFile(ctx, filepath.Join(tools.RepoRoot(), "config", "rbac", "cache", "role.yaml")); err != nil {
		t.Fatal(err)
	}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "wasme-cache-" + ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "wasme-cache"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: "wasme-cache"}},
	}
	if err := env.Client.Create(ctx, crb); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), crb) })
}

// nodeCacheApply is the server-side apply a daemon does of NodeCache/name's status.
func nodeCacheApply(name string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion(wasmev1.GroupVersion.String())
	u.SetKind("NodeCache")
	u.SetName(name)
	u.Object["status"] = map[string]any{
		"heartbeatTime": time.Now().UTC().Format(time.RFC3339),
		"conditions": []any{map[string]any{
			"type": "Ready", "status": "True", "reason": "Serving", "message": "forged",
			"lastTransitionTime": time.Now().UTC().Format(time.RFC3339),
		}},
	}
	return u
}

// A node cache's token (pod-bound, as the kubelet mounts it) can write its own node's
// NodeCache, and the API server refuses it for another node's: one node cannot forge Ready
// for the others. A wasme-cache token bound to no pod is refused too.
func TestNodeCacheWritesOnlyItsOwnNode(t *testing.T) {
	op := startOperator(t) // creates ServiceAccount <ns>/wasme-cache
	ns := op.ns
	grantCacheRole(t, ns)
	ctx := context.Background()
	nodeA, nodeB := "bound-"+ns+"-a", "bound-"+ns+"-b"
	createNode(t, nodeA)
	createNode(t, nodeB)
	// Node B's NodeCache exists, written by an administrator: the forger would overwrite it.
	if err := env.Client.Create(ctx, &wasmev1.NodeCache{ObjectMeta: metav1.ObjectMeta{Name: nodeB}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = env.Client.Delete(context.Background(), &wasmev1.NodeCache{ObjectMeta: metav1.ObjectMeta{Name: nodeB}})
	})

	tokenA, err := env.PodBoundToken(ctx, ns, "wasme-cache", nodeA, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	asA, err := client.New(env.TokenConfig(tokenA), client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}

	// The daemon of node A, running with node A's token, reports as usual.
	startNode(t, op, nodeA, t.TempDir(), func(o *Options) { o.Config = env.TokenConfig(tokenA) }, nil)
	waitFor(t, nodeA+" Ready with node A's token", func() (bool, string) {
		_, _, ready, err := moduleState(nodeA, "")
		return ready, fmt.Sprint(err)
	})

	// The admission policy loads asynchronously; the daemon above succeeding says nothing
	// about it, so wait until it refuses a dry run, then try for real.
	forge := func(c client.Client, name string, opts ...client.SubResourceApplyOption) error {
		opts = append(opts, client.FieldOwner(wasmev1.CacheFieldManager), client.ForceOwnership)
		return c.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(nodeCacheApply(name)), opts...)
	}
	waitFor(t, "the NodeCache admission policy", func() (bool, string) {
		err := forge(asA, nodeB, client.DryRunAll)
		return err != nil && strings.Contains(err.Error(), "own node"), fmt.Sprint(err)
	})
	err = forge(asA, nodeB)
	if err == nil || !strings.Contains(err.Error(), "may write only its own node's NodeCache") || !strings.Contains(err.Error(), "bound to node "+nodeA) {
		t.Fatalf("node A's token writing NodeCache/%s: %v, want a refusal naming both nodes", nodeB, err)
	}
	nc, err := getNodeCache(nodeB)
	if err != nil || len(nc.Status.Conditions) != 0 {
		t.Fatalf("NodeCache/%s after the refused write: %+v, %v; want it untouched", nodeB, nc.Status, err)
	}
	// Creating a NodeCache for a node that has none is refused the same way.
	other := &wasmev1.NodeCache{ObjectMeta: metav1.ObjectMeta{Name: "bound-" + ns + "-c"}}
	if err := asA.Create(ctx, other); err == nil || !strings.Contains(err.Error(), "own node") {
		t.Fatalf("node A's token creating NodeCache/%s: %v, want refused", other.Name, err)
	}
	// Its own node's status, by the same token, goes through.
	if err := forge(asA, nodeA); err != nil {
		t.Fatalf("node A's token writing its own NodeCache: %v", err)
	}

	// A token of the same ServiceAccount that no pod binds to a node is refused outright.
	_, unbound, err := env.ServiceAccountConfig(ctx, ns, "wasme-cache")
	if err != nil {
		t.Fatal(err)
	}
	asUnbound, err := client.New(env.TokenConfig(unbound), client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	if err := forge(asUnbound, nodeA); err == nil || !strings.Contains(err.Error(), "names no node") {
		t.Fatalf("an unbound wasme-cache token writing NodeCache/%s: %v, want refused", nodeA, err)
	}
}

// The daemon renews status.heartbeatTime every interval even when nothing else changes, and
// does not rewrite anything else.
func TestHeartbeatRenews(t *testing.T) {
	op := startOperator(t)
	n := startNode(t, op, "heartbeat-1", t.TempDir(), func(o *Options) { o.HeartbeatInterval = time.Second }, nil)
	var first time.Time
	waitFor(t, "a first heartbeat", func() (bool, string) {
		nc, err := getNodeCache(n.name)
		if err != nil || nc.Status.HeartbeatTime == nil {
			return false, fmt.Sprint(err)
		}
		first = nc.Status.HeartbeatTime.Time
		return true, ""
	})
	waitFor(t, "a renewed heartbeat", func() (bool, string) {
		nc, err := getNodeCache(n.name)
		if err != nil || nc.Status.HeartbeatTime == nil {
			return false, fmt.Sprint(err)
		}
		return nc.Status.HeartbeatTime.After(first), nc.Status.HeartbeatTime.String()
	})
}

// A module file changed on disk after it was verified (the hostPath is writable by the
// node) is found by the scheduled re-verification, removed, fetched again and reported Ready
// once its bytes are right again.
func TestTamperedModuleIsRefetched(t *testing.T) {
	op := startOperator(t)
	mod := wasmModule("tamper")
	op.put(t, mod)
	h := hexOf(mod)
	n := startNode(t, op, "tamper-1", t.TempDir(), func(o *Options) { o.VerifyInterval = 200 * time.Millisecond }, nil)
	filterDeployment(t, op.ns, "tamper", mod)
	waitModule(t, n.name, h, wasmev1.ModuleReady)
	if got := op.fetchCount(n.name, h); got != 1 {
		t.Fatalf("fetched %d times before tampering, want 1", got)
	}

	// Same size, other bytes: only hashing can tell.
	path := filepath.Join(n.dir, h)
	bad := bytes.Clone(mod)
	bad[len(bad)-1] ^= 0xff
	if err := os.WriteFile(path, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the tampered module to be fetched again", func() (bool, string) {
		return op.fetchCount(n.name, h) == 2, fmt.Sprintf("%d fetches", op.fetchCount(n.name, h))
	})
	waitModule(t, n.name, h, wasmev1.ModuleReady)
	waitFor(t, "the intact module on disk", func() (bool, string) {
		data, err := os.ReadFile(path)
		return err == nil && bytes.Equal(data, mod), fmt.Sprint(err)
	})
	if v := metricValue(t, n, `wasme_cache_removals_total{reason="corrupt"}`); v != "1" {
		t.Errorf(`wasme_cache_removals_total{reason="corrupt"} = %q, want 1`, v)
	}
}
