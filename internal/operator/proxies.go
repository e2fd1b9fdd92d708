package operator

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/proxystatus"
)

// ProxyStatus is istiod's per-proxy state as the reconciler reads it (a proxystatus.Tracker).
type ProxyStatus interface {
	Snapshot() *proxystatus.Snapshot
}

// maxMessage bounds one pod's proxy message in status (an Envoy NACK can be long).
const maxProxyMessage = 1024

// injectedAnnotation is what Istio's sidecar injector writes on every pod it injects.
const injectedAnnotation = "sidecar.istio.io/status"

// podProxies are the pods of one workload and where each one's proxy stands.
type podProxies struct {
	programmed, total int
	others            []wasmev1.PodProxyStatus
}

// proxyTypes are the xDS types that carry the filter in a delivery: in mount the Wasm filter is
// in the listener; in ECDS the listener names it and the extension config holds it.
func proxyTypes(d wasmev1.Delivery) []string {
	if d == wasmev1.DeliveryECDS {
		return []string{proxystatus.ListenerType, proxystatus.ExtensionConfigType}
	}
	return []string{proxystatus.ListenerType}
}

func shortType(t string) string {
	switch t {
	case proxystatus.ListenerType:
		return "listeners (LDS)"
	case proxystatus.ExtensionConfigType:
		return "extension configs (ECDS)"
	}
	return t
}

// proxyState is where one pod's proxy stands with the configuration changed at since.
func proxyState(snap *proxystatus.Snapshot, pod *metav1.PartialObjectMetadata, types []string, since time.Time) (wasmev1.ProxyState, string) {
	p, ok := snap.Proxy(pod.Namespace, pod.Name)
	if !ok {
		msg := "no proxy of this pod is connected to istiod"
		if _, injected := pod.Annotations[injectedAnnotation]; !injected {
			msg += " (the pod has no " + injectedAnnotation + " annotation: was its sidecar injected?)"
		}
		return wasmev1.ProxyNotConnected, msg
	}
	for _, t := range types {
		if r := p.Types[t]; r.Sync == proxystatus.Error || r.Error != "" {
			return wasmev1.ProxyRejected, truncate(fmt.Sprintf("the proxy refused %s: %s", shortType(t), r.Error), maxProxyMessage)
		}
	}
	for _, t := range types {
		r, ok := p.Types[t]
		switch {
		case !ok || r.Sync == proxystatus.NotSent:
			return wasmev1.ProxyPending, fmt.Sprintf("istiod has not sent %s to the proxy", shortType(t))
		case r.Sync != proxystatus.Synced:
			return wasmev1.ProxyPending, fmt.Sprintf("the proxy has not answered istiod's last %s push (%s)", shortType(t), r.Sync)
		case r.Sent.Before(since):
			return wasmev1.ProxyPending, fmt.Sprintf("istiod has not pushed %s since the EnvoyFilter changed at %s", shortType(t), since.UTC().Format(time.RFC3339Nano))
		}
	}
	return wasmev1.ProxyProgrammed, ""
}

// stateOrder lists the worst first in status.
var stateOrder = map[wasmev1.ProxyState]int{wasmev1.ProxyRejected: 0, wasmev1.ProxyNotConnected: 1, wasmev1.ProxyPending: 2}

// workloadProxies reads the pods of w and their proxies' state.
func (r *FilterDeploymentReconciler) workloadProxies(ctx context.Context, fd *wasmev1.FilterDeployment, w workload, snap *proxystatus.Snapshot,
	delivery wasmev1.Delivery, since time.Time,
) (podProxies, error) {
	var out podProxies
	if len(w.templateLabels) == 0 {
		return out, nil // no label to find its pods by
	}
	var pods metav1.PartialObjectMetadataList
	pods.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("PodList"))
	// A workload's pods carry its pod template's labels (the selector is a subset of them).
	if err := r.List(ctx, &pods, client.InNamespace(fd.Namespace), client.MatchingLabels(w.templateLabels)); err != nil {
		return podProxies{}, fmt.Errorf("listing the pods of %s: %w", w.key(), err)
	}
	types := proxyTypes(delivery)
	for i := range pods.Items {
		pod := &pods.Items[i]
		if pod.DeletionTimestamp != nil {
			continue
		}
		out.total++
		state, msg := proxyState(snap, pod, types, since)
		if state == wasmev1.ProxyProgrammed && delivery != wasmev1.DeliveryECDS && pod.Labels[CacheMountedLabel] != "true" {
			// The EnvoyFilter selects only pods that mount the node cache.
			state, msg = wasmev1.ProxyPending, "the pod predates the node cache mount; it gets the filter when it rolls"
		}
		if state == wasmev1.ProxyProgrammed {
			out.programmed++
			continue
		}
		out.others = append(out.others, wasmev1.PodProxyStatus{Pod: pod.Name, State: state, Message: msg})
	}
	slices.SortFunc(out.others, func(a, b wasmev1.PodProxyStatus) int {
		return cmp.Or(cmp.Compare(stateOrder[a.State], stateOrder[b.State]), strings.Compare(a.Pod, b.Pod))
	})
	return out, nil
}

// reconcileProxies sets each applied workload's proxies and the Programmed condition from
// istiod's proxy state. applied are the workloads this pass wrote the filter's EnvoyFilter
// for; nil when the pass did not get that far.
func (r *FilterDeploymentReconciler) reconcileProxies(ctx context.Context, fd *wasmev1.FilterDeployment, applied []workload, delivery wasmev1.Delivery) {
	st := &fd.Status
	set := func(status metav1.ConditionStatus, reason, msg string) {
		apimeta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: wasmev1.ProgrammedCondition, Status: status,
			Reason: reason, Message: truncate(msg, maxMessageBytes), ObservedGeneration: fd.Generation})
	}
	if applied == nil {
		// The pass stopped before the workloads: what the proxies run did not change, unless
		// this is a new generation, whose configuration is not written yet.
		if c := apimeta.FindStatusCondition(st.Conditions, wasmev1.ProgrammedCondition); c == nil || c.ObservedGeneration != fd.Generation {
			set(metav1.ConditionFalse, wasmev1.NotAppliedReason, fmt.Sprintf("the configuration of generation %d is not written yet (see Ready)", fd.Generation))
			st.ProxiesProgrammed = ""
		}
		return
	}
	if r.Proxies == nil {
		set(metav1.ConditionUnknown, wasmev1.ProxyStatusDisabledReason, "the operator runs without istiod proxy tracking (--istiod-address is empty)")
		return
	}
	snap := r.Proxies.Snapshot()
	if snap.Err != nil {
		set(metav1.ConditionUnknown, wasmev1.ProxyStatusUnavailableReason, "reading istiod's proxy state: "+snap.Err.Error())
		return
	}
	programmed, total := 0, 0
	var rejected, pending []string
	for _, w := range applied {
		ws := st.Workloads[w.name]
		since := time.Time{}
		if ws.ConfiguredTime != nil {
			since = ws.ConfiguredTime.Time
		}
		pp, err := r.workloadProxies(ctx, fd, w, snap, delivery, since)
		if err != nil {
			set(metav1.ConditionUnknown, wasmev1.ProxyStatusUnavailableReason, err.Error())
			return
		}
		programmed += pp.programmed
		total += pp.total
		ws.Proxies = fmt.Sprintf("%d/%d", pp.programmed, pp.total)
		ws.NotProgrammed = nil
		for i, o := range pp.others {
			if i < maxListed {
				ws.NotProgrammed = append(ws.NotProgrammed, o)
			}
			line := fmt.Sprintf("%s (%s): %s", o.Pod, o.State, o.Message)
			if o.State == wasmev1.ProxyRejected {
				rejected = append(rejected, line)
			} else {
				pending = append(pending, line)
			}
		}
		st.Workloads[w.name] = ws
	}
	st.ProxiesProgrammed = fmt.Sprintf("%d/%d", programmed, total)
	// Workloads the pass could not give the filter (see Ready) run it on none of their pods.
	unapplied := len(st.Workloads) - len(applied)
	switch {
	case len(rejected) > 0:
		set(metav1.ConditionFalse, wasmev1.ProxyRejectedReason, fmt.Sprintf("%d of %d proxies refused the configuration: %s",
			len(rejected), total, listSome(append(rejected, pending...))))
	case unapplied > 0:
		set(metav1.ConditionFalse, wasmev1.ProxiesPendingReason, fmt.Sprintf("%d of %d workloads do not have the filter's configuration (see Ready); %d of %d proxies of the others run it",
			unapplied, len(st.Workloads), programmed, total))
	case total == 0:
		set(metav1.ConditionFalse, wasmev1.ProxiesPendingReason, "the selected workloads have no pods")
	case programmed < total:
		set(metav1.ConditionFalse, wasmev1.ProxiesPendingReason, fmt.Sprintf("%d of %d proxies run the filter: %s", programmed, total, listSome(pending)))
	default:
		set(metav1.ConditionTrue, wasmev1.ProgrammedReason, fmt.Sprintf("%d/%d proxies ACKed the configuration with the filter", programmed, total))
	}
}

// proxiesChanged enqueues the FilterDeployments of the namespaces whose proxies changed in
// istiod's state (every one when reading it started or stopped failing).
func (r *FilterDeploymentReconciler) proxiesChanged(old, cur *proxystatus.Snapshot) {
	if r.proxyEvents == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var list wasmev1.FilterDeploymentList
	if err := r.List(ctx, &list); err != nil {
		return
	}
	all := (old.Err == nil) != (cur.Err == nil)
	changed := proxystatus.Changed(old, cur)
	for i := range list.Items {
		fd := &list.Items[i]
		if all || changed[fd.Namespace] {
			select {
			case r.proxyEvents <- event.TypedGenericEvent[*wasmev1.FilterDeployment]{Object: fd}:
			case <-ctx.Done():
				return
			}
		}
	}
}
