package nodecache

import (
	"context"
	"fmt"
	"sort"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	wasmev1 "wasme.io/wasme/api/v1"
	wasmeac "wasme.io/wasme/api/v1/applyconfiguration/api/v1"
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
	status := wasmeac.NodeCache(d.opts.NodeName).WithStatus(statusApply(st, time.Now()))
	if err := d.client.Status().Apply(ctx, status, client.FieldOwner(wasmev1.CacheFieldManager), client.ForceOwnership); err != nil {
		return fmt.Errorf("applying the status of NodeCache %s: %w", d.opts.NodeName, err)
	}
	return nil
}

// applyObject applies the NodeCache itself and remembers its UID for the Events about it.
func (d *Daemon) applyObject(ctx context.Context) error {
	obj := wasmeac.NodeCache(d.opts.NodeName)
	if o := d.owner; o != nil {
		obj.WithOwnerReferences(metav1ac.OwnerReference().WithAPIVersion(o.APIVersion).WithKind(o.Kind).WithName(o.Name).WithUID(o.UID))
	}
	if err := d.client.Apply(ctx, obj, client.FieldOwner(wasmev1.CacheFieldManager), client.ForceOwnership); err != nil {
		return fmt.Errorf("applying NodeCache %s: %w", d.opts.NodeName, err)
	}
	d.mu.Lock()
	if d.regarding != nil && obj.UID != nil {
		d.regarding.UID = *obj.UID
	}
	d.mu.Unlock()
	return nil
}

// statusApply is the applied status: an apply owns exactly the fields it sends, so only the
// set ones are sent, never the zero values of the struct. Every report carries
// heartbeatTime, the time of the write.
func statusApply(st wasmev1.NodeCacheStatus, heartbeat time.Time) *wasmeac.NodeCacheStatusApplyConfiguration {
	ac := wasmeac.NodeCacheStatus().WithHeartbeatTime(metav1.NewTime(heartbeat))
	for _, c := range st.Conditions {
		ac.WithConditions(metav1ac.Condition().WithType(c.Type).WithStatus(c.Status).WithReason(c.Reason).
			WithMessage(c.Message).WithLastTransitionTime(c.LastTransitionTime))
	}
	for _, m := range st.Modules {
		e := wasmeac.NodeCacheModule().WithDigest(m.Digest).WithState(m.State)
		if m.Size > 0 {
			e.WithSize(m.Size)
		}
		if m.Message != "" {
			e.WithMessage(m.Message)
		}
		if !m.LastTransitionTime.IsZero() {
			e.WithLastTransitionTime(m.LastTransitionTime)
		}
		ac.WithModules(e)
	}
	return ac
}
