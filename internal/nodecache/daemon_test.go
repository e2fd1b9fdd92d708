package nodecache

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	wasmev1 "wasme.io/wasme/api/v1"
)

// TestThreeNodes is the main scenario: three nodes, one FilterDeployment, each node
// fetches the module exactly once, holds byte-identical files named by sha256 and reports
// Ready; a re-pushed tag's new module is cached, the old one kept while Envoy still loads it
// and collected after the grace period once the new one is deployed.
func TestThreeNodes(t *testing.T) {
	op := startOperator(t)
	v1, v2 := wasmModule("v1"), wasmModule("v2")
	op.put(t, v1)
	op.put(t, v2)
	const grace = 3 * time.Second

	names := []string{"three-1", "three-2", "three-3"}
	nodes := make([]*node, len(names))
	uids := map[string]string{}
	for i, name := range names {
		uids[name] = string(createNode(t, name).UID)
		nodes[i] = startNode(t, op, name, t.TempDir(), func(o *Options) { o.GracePeriod = grace }, nil)
	}
	// Every node reports Ready before the FilterDeployment exists, so the operator can count
	// them as the nodes it must wait for.
	for _, n := range nodes {
		waitFor(t, n.name+" Ready", func() (bool, string) {
			_, _, ready, err := moduleState(n.name, "")
			return ready, fmt.Sprint(err)
		})
	}

	start := time.Now()
	fd := filterDeployment(t, op.ns, "three", v1)
	for _, n := range nodes {
		waitModule(t, n.name, hexOf(v1), wasmev1.ModuleReady)
	}
	t.Logf("all three nodes reported v1 Ready %s after the FilterDeployment status named it", time.Since(start))

	for _, n := range nodes {
		if got := op.fetchCount(n.name, hexOf(v1)); got != 1 {
			t.Errorf("%s fetched v1 %d times, want 1", n.name, got)
		}
		path := filepath.Join(n.dir, hexOf(v1))
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%s: %v", n.name, err)
		}
		if !bytes.Equal(data, v1) {
			t.Errorf("%s: %s differs from the module", n.name, path)
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
			t.Errorf("%s: mode %v, want 0644 so that sidecars can read it", n.name, fi.Mode().Perm())
		}
		if entries, _ := os.ReadDir(n.dir); len(entries) != 1 {
			t.Errorf("%s: directory holds %d entries, want only the module", n.name, len(entries))
		}
		nc, err := getNodeCache(n.name)
		if err != nil {
			t.Fatal(err)
		}
		if refs := nc.OwnerReferences; len(refs) != 1 || refs[0].Kind != "Node" || string(refs[0].UID) != uids[n.name] {
			t.Errorf("%s: owner references %+v, want its Node", n.name, refs)
		}
		if mf := nc.ManagedFields; len(mf) == 0 || mf[0].Manager != wasmev1.CacheFieldManager {
			t.Errorf("%s: managed fields %+v, want the %s field manager", n.name, mf, wasmev1.CacheFieldManager)
		}
		if v := metricValue(t, n, `wasme_cache_fetches_total{result="success"}`); v != "1" {
			t.Errorf("%s: wasme_cache_fetches_total{result=success} = %q, want 1", n.name, v)
		}
	}

	// The tag is re-pushed with new content; the operator resolves it and names the new module
	// while the EnvoyFilters still load the old one (status.deployedModuleDigest).
	repushed := time.Now()
	fd.Status.DeployedModuleDigest = "sha256:" + hexOf(v1)
	setModule(t, fd, v2)
	for _, n := range nodes {
		waitModule(t, n.name, hexOf(v2), wasmev1.ModuleReady)
	}
	t.Logf("all three nodes reported v2 Ready %s after the re-push", time.Since(repushed))
	// Well past the grace period, the deployed v1 is still kept: Envoy loads it.
	time.Sleep(grace + time.Second)
	for _, n := range nodes {
		if st, _, _, _ := moduleState(n.name, hexOf(v1)); st != wasmev1.ModuleReady {
			t.Errorf("%s: the deployed v1 is %q while still deployed, want Ready", n.name, st)
		}
		if _, err := os.Stat(filepath.Join(n.dir, hexOf(v1))); err != nil {
			t.Errorf("%s: the deployed v1 left the disk: %v", n.name, err)
		}
	}

	// The operator rolls out v2; v1 is collected once the grace period has passed.
	rolledOut := time.Now()
	fd.Status.DeployedModuleDigest = "sha256:" + hexOf(v2)
	setModule(t, fd, v2)
	for _, n := range nodes {
		waitGone(t, n.name, hexOf(v1))
		if _, err := os.Stat(filepath.Join(n.dir, hexOf(v1))); !os.IsNotExist(err) {
			t.Errorf("%s: v1 still on disk after it left the report: %v", n.name, err)
		}
	}
	if elapsed := time.Since(rolledOut); elapsed < grace {
		t.Errorf("v1 was collected %s after the rollout, before the %s grace period ended", elapsed, grace)
	}
	for _, n := range nodes {
		if got := op.fetchCount(n.name, hexOf(v2)); got != 1 {
			t.Errorf("%s fetched v2 %d times, want 1", n.name, got)
		}
		if v := metricValue(t, n, `wasme_cache_removals_total{reason="unused"}`); v != "1" {
			t.Errorf("%s: wasme_cache_removals_total{reason=unused} = %q, want 1", n.name, v)
		}
		data, err := os.ReadFile(filepath.Join(n.dir, hexOf(v2)))
		if err != nil || !bytes.Equal(data, v2) {
			t.Errorf("%s: v2 on disk: %v, equal %v", n.name, err, bytes.Equal(data, v2))
		}
	}

	// Stopping a daemon reports Ready=False, so the operator stops waiting for that node.
	if err := nodes[0].stop(); err != nil {
		t.Fatal(err)
	}
	var nc wasmev1.NodeCache
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: nodes[0].name}, &nc); err != nil {
		t.Fatal(err)
	}
	if c := nc.Status.Conditions; len(c) != 1 || c[0].Status != "False" || c[0].Reason != "ShuttingDown" {
		t.Errorf("after shutdown: conditions %+v, want Ready=False ShuttingDown", c)
	}
}
