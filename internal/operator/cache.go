package operator

import (
	"context"
	"fmt"

	apimeta "k8s.io/apimachinery/pkg/api/meta"

	wasmev1 "wasme.io/wasme/api/v1"
)

// reconcileCache waits until every ready node cache holds the module, so no sidecar is told
// to load a file its node lacks. NodeCaches are watched: a node's report brings the next pass.
func (r *FilterDeploymentReconciler) reconcileCache(ctx context.Context, fd *wasmev1.FilterDeployment, _ *pass) (stepResult, error) {
	var nodes wasmev1.NodeCacheList
	if err := r.List(ctx, &nodes); err != nil {
		return stepResult{}, fmt.Errorf("listing node caches: %w", err)
	}
	var ready, cached int32
	for i := range nodes.Items {
		nc := &nodes.Items[i]
		if !apimeta.IsStatusConditionTrue(nc.Status.Conditions, wasmev1.ReadyCondition) {
			continue
		}
		ready++
		for _, m := range nc.Status.Modules {
			if m.Digest == fd.Status.ModuleDigest && m.State == wasmev1.ModuleReady {
				cached++
			}
		}
	}
	fd.Status.CacheNodes, fd.Status.CachedNodes = ready, cached
	var wait error
	switch {
	case ready == 0:
		wait = waiting(wasmev1.CachePendingReason, 0, fmt.Errorf("no node cache is ready: is the wasme-cache DaemonSet running?"))
	case cached < ready:
		wait = waiting(wasmev1.CachePendingReason, 0, fmt.Errorf("module %s cached on %d/%d nodes", fd.Status.ModuleDigest, cached, ready))
	default:
		return stepResult{}, nil
	}
	// Workloads wait too; say so rather than show a stale state.
	for name, w := range fd.Status.Workloads {
		if w.State != wasmev1.WorkloadSucceeded {
			fd.Status.Workloads[name] = wasmev1.WorkloadStatus{State: wasmev1.WorkloadPending, Reason: wait.Error()}
		}
	}
	return stepResult{}, wait
}
