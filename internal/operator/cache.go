package operator

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	wasmev1 "wasme.io/wasme/api/v1"
)

// DefaultCacheHeartbeatGrace is how long a node cache may stay silent before the operator stops
// counting it: three of the daemon's default 20 s heartbeats.
const DefaultCacheHeartbeatGrace = 60 * time.Second

// cacheGrace is the reconciler's heartbeat grace period, defaulted.
func (r *FilterDeploymentReconciler) cacheGrace() time.Duration {
	if r.CacheHeartbeatGrace > 0 {
		return r.CacheHeartbeatGrace
	}
	return DefaultCacheHeartbeatGrace
}

// nodeCacheLive reports whether a node cache counts: Ready=True and a heartbeat younger than
// grace. It also returns when it stops counting (zero if it does not count now).
func nodeCacheLive(nc *wasmev1.NodeCache, now time.Time, grace time.Duration) (bool, time.Time) {
	if !apimeta.IsStatusConditionTrue(nc.Status.Conditions, wasmev1.ReadyCondition) || nc.Status.HeartbeatTime == nil {
		return false, time.Time{}
	}
	expires := nc.Status.HeartbeatTime.Add(grace)
	if !now.Before(expires) {
		return false, time.Time{}
	}
	return true, expires
}

// reconcileCache waits until every live node cache holds the module, so no sidecar is told
// to load a file its node lacks. NodeCaches are watched: a node's report brings the next pass.
// A node cache that says Ready but has not renewed its heartbeat within the grace period (a
// daemon killed without stopping, a lost node) is not counted, so it cannot stall rollouts; the
// pending message names such nodes.
func (r *FilterDeploymentReconciler) reconcileCache(ctx context.Context, fd *wasmev1.FilterDeployment, _ *pass) (stepResult, error) {
	var nodes wasmev1.NodeCacheList
	if err := r.List(ctx, &nodes); err != nil {
		return stepResult{}, fmt.Errorf("listing node caches: %w", err)
	}
	now, grace := time.Now(), r.cacheGrace()
	var ready, cached int32
	var silent []string
	// The earliest time a counted node that lacks the module stops counting: a silent node
	// sends no event, so the pass must come back by itself then.
	var recheck time.Time
	for i := range nodes.Items {
		nc := &nodes.Items[i]
		live, expires := nodeCacheLive(nc, now, grace)
		if !live {
			if apimeta.IsStatusConditionTrue(nc.Status.Conditions, wasmev1.ReadyCondition) {
				silent = append(silent, nc.Name)
			}
			continue
		}
		ready++
		has := false
		for _, m := range nc.Status.Modules {
			if m.Digest == fd.Status.ModuleDigest && m.State == wasmev1.ModuleReady {
				has = true
			}
		}
		if has {
			cached++
		} else if recheck.IsZero() || expires.Before(recheck) {
			recheck = expires
		}
	}
	fd.Status.CacheNodes, fd.Status.CachedNodes = ready, cached
	silentNote := ""
	if len(silent) > 0 {
		slices.Sort(silent)
		shown := silent[:min(len(silent), 5)]
		silentNote = fmt.Sprintf("; not counted, silent for more than %s: %s", grace, strings.Join(shown, ", "))
		if more := len(silent) - len(shown); more > 0 {
			silentNote += fmt.Sprintf(" and %d more", more)
		}
	}
	var wait error
	switch {
	case ready == 0:
		wait = waiting(wasmev1.CachePendingReason, 0, fmt.Errorf("no node cache is ready: is the wasme-cache DaemonSet running?%s", silentNote))
	case cached < ready:
		// A second's slack, since heartbeats are stored with one second precision.
		wait = waiting(wasmev1.CachePendingReason, time.Until(recheck)+time.Second,
			fmt.Errorf("module %s cached on %d/%d nodes%s", fd.Status.ModuleDigest, cached, ready, silentNote))
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

// nodeCachePredicate drops the updates that only renew a node cache's heartbeat: with a
// thousand nodes renewing every 20 s they would otherwise bring fifty passes a second of every
// FilterDeployment that lists their module. A renewal from a node that had gone silent still
// passes, since that node counts again.
type nodeCachePredicate struct {
	predicate.Funcs
	grace func() time.Duration
}

func (p nodeCachePredicate) Update(e event.UpdateEvent) bool {
	oldNC, ok1 := e.ObjectOld.(*wasmev1.NodeCache)
	newNC, ok2 := e.ObjectNew.(*wasmev1.NodeCache)
	if !ok1 || !ok2 {
		return true
	}
	if live, _ := nodeCacheLive(oldNC, time.Now(), p.grace()); !live {
		return true
	}
	o, n := oldNC.Status.DeepCopy(), newNC.Status.DeepCopy()
	o.HeartbeatTime, n.HeartbeatTime = nil, nil
	return !equality.Semantic.DeepEqual(o, n) || !equality.Semantic.DeepEqual(oldNC.OwnerReferences, newNC.OwnerReferences)
}
