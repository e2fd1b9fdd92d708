package nodecache

import (
	"context"
	"fmt"
	"sort"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	wasmev1 "wasme.io/wasme/api/v1"
)

// snapshot is the status to report, modules sorted by digest so equal states compare equal.
func (d *Daemon) snapshot() wasmev1.NodeCacheStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := wasmev1.NodeCacheStatus{}
	if d.readyCond.Type != "" {
		st.Conditions = []metav1.Condition{d.readyCond}
	}
	for h, m := range d.modules {
		st.Modules = append(st.Modules, wasmev1.NodeCacheModule{
			Digest: "sha256:" + h, State: m.state, Size: m.size, Message: m.message, LastTransitionTime: m.since,
		})
	}
	sort.Slice(st.Modules, func(i, j int) bool { return st.Modules[i].Digest < st.Modules[j].Digest })
	return st
}

// reportLoop writes the status whenever it changed, and at least every HeartbeatInterval with
// a new heartbeatTime, retrying failed writes with backoff until ctx ends; reports coalesce,
// so a burst of changes costs one write.
func (d *Daemon) reportLoop(ctx context.Context) {
	var last *wasmev1.NodeCacheStatus
	heartbeat := time.NewTicker(d.opts.HeartbeatInterval)
	defer heartbeat.Stop()
	for attempt := 0; ; {
		renew := false
		select {
		case <-ctx.Done():
			return
		case <-d.reportKick:
		case <-heartbeat.C:
			renew = true
		}
		st := d.snapshot()
		if st.Conditions == nil || (!renew && last != nil && equality.Semantic.DeepEqual(*last, st)) {
			continue
		}
		if err := d.apply(ctx, st); err != nil {
			if ctx.Err() != nil {
				return
			}
			delay := backoff(attempt, d.opts.MinRetry, d.opts.MaxRetry)
			attempt++
			d.opts.Log.Error(err, "reporting the cache status; retrying", "retryIn", delay)
			t := time.NewTimer(delay)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
				d.kick(d.reportKick)
			}
			continue
		}
		attempt = 0
		last = &st
		// Any write renews the heartbeat; the next renewal is due an interval from now.
		heartbeat.Reset(d.opts.HeartbeatInterval)
	}
}

// apply server-side applies NodeCache/<node>: the object with its owner reference, then the
// status. Both are applied every time, so a NodeCache someone deleted comes back.
func (d *Daemon) apply(ctx context.Context, st wasmev1.NodeCacheStatus) error {
	if err := d.applyObject(ctx); err != nil {
		return err
	}
	status := d.newNodeCache()
	status.Object["status"] = statusObject(st, time.Now())
	if err := d.client.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(status),
		client.FieldOwner(wasmev1.CacheFieldManager), client.ForceOwnership); err != nil {
		return fmt.Errorf("applying the status of NodeCache %s: %w", d.opts.NodeName, err)
	}
	return nil
}

// applyObject applies the NodeCache itself and remembers its UID for the Events about it.
func (d *Daemon) applyObject(ctx context.Context) error {
	obj := d.newNodeCache()
	if d.owner != nil {
		obj.SetOwnerReferences([]metav1.OwnerReference{*d.owner})
	}
	if err := d.client.Apply(ctx, client.ApplyConfigurationFromUnstructured(obj),
		client.FieldOwner(wasmev1.CacheFieldManager), client.ForceOwnership); err != nil {
		return fmt.Errorf("applying NodeCache %s: %w", d.opts.NodeName, err)
	}
	d.mu.Lock()
	if d.regarding != nil {
		d.regarding.UID = obj.GetUID()
	}
	d.mu.Unlock()
	return nil
}

func (d *Daemon) newNodeCache() *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion(wasmev1.GroupVersion.String())
	u.SetKind("NodeCache")
	u.SetName(d.opts.NodeName)
	return u
}

// statusObject builds the applied status by hand: an apply owns exactly the fields it sends,
// so it must not carry the zero values a struct conversion would add.
// Every report carries heartbeatTime, the time of the write.
func statusObject(st wasmev1.NodeCacheStatus, heartbeat time.Time) map[string]any {
	conds := []any{}
	for _, c := range st.Conditions {
		conds = append(conds, map[string]any{
			"type": c.Type, "status": string(c.Status), "reason": c.Reason, "message": c.Message,
			"lastTransitionTime": c.LastTransitionTime.UTC().Format(time.RFC3339),
		})
	}
	modules := []any{}
	for _, m := range st.Modules {
		e := map[string]any{"digest": m.Digest, "state": string(m.State)}
		if m.Size > 0 {
			e["size"] = m.Size
		}
		if m.Message != "" {
			e["message"] = m.Message
		}
		if !m.LastTransitionTime.IsZero() {
			e["lastTransitionTime"] = m.LastTransitionTime.UTC().Format(time.RFC3339)
		}
		modules = append(modules, e)
	}
	return map[string]any{"conditions": conds, "modules": modules, "heartbeatTime": heartbeat.UTC().Format(time.RFC3339)}
}
