package operator

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/proxystatus"
)

// TestProxyState: a pod's state from istiod's view of its proxy, for the xDS types carrying the
// filter and the time its EnvoyFilter last changed.
func TestProxyState(t *testing.T) {
	since := time.Date(2026, 12, 2, 18, 0, 0, 0, time.UTC)
	after, before := since.Add(time.Second), since.Add(-time.Second)
	pod := func(name string, injected bool) *metav1.PartialObjectMetadata {
		p := &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}}
		if injected {
			p.Annotations = map[string]string{injectedAnnotation: "{}"}
		}
		return p
	}
	snap := &proxystatus.Snapshot{Proxies: map[string]proxystatus.Proxy{}}
	add := func(name string, types map[string]proxystatus.Resource) {
		snap.Proxies["ns/"+name] = proxystatus.Proxy{Pod: name, Namespace: "ns", Types: types}
	}
	lds, ecds := proxystatus.ListenerType, proxystatus.ExtensionConfigType
	add("acked", map[string]proxystatus.Resource{lds: {Sync: proxystatus.Synced, Sent: after}})
	add("acked-before", map[string]proxystatus.Resource{lds: {Sync: proxystatus.Synced, Sent: before}})
	add("nacked", map[string]proxystatus.Resource{lds: {Sync: proxystatus.Error, Sent: after, Error: "module missing"}})
	add("stale", map[string]proxystatus.Resource{lds: {Sync: proxystatus.Stale, Sent: after}})
	add("no-ecds", map[string]proxystatus.Resource{lds: {Sync: proxystatus.Synced, Sent: after}})
	add("ecds-nack", map[string]proxystatus.Resource{lds: {Sync: proxystatus.Synced, Sent: after},
		ecds: {Sync: proxystatus.Error, Sent: after, Error: "fetch failed"}})

	for _, tc := range []struct {
		pod      *metav1.PartialObjectMetadata
		delivery wasmev1.Delivery
		want     wasmev1.ProxyState
		msg      string
	}{
		{pod("acked", true), wasmev1.DeliveryMount, wasmev1.ProxyProgrammed, ""},
		{pod("acked-before", true), wasmev1.DeliveryMount, wasmev1.ProxyPending, "not pushed listeners (LDS) since the EnvoyFilter changed"},
		{pod("nacked", true), wasmev1.DeliveryMount, wasmev1.ProxyRejected, "refused listeners (LDS): module missing"},
		{pod("stale", true), wasmev1.DeliveryMount, wasmev1.ProxyPending, "has not answered"},
		{pod("gone", true), wasmev1.DeliveryMount, wasmev1.ProxyNotConnected, "no proxy of this pod is connected"},
		{pod("gone", false), wasmev1.DeliveryMount, wasmev1.ProxyNotConnected, "was its sidecar injected?"},
		{pod("no-ecds", true), wasmev1.DeliveryECDS, wasmev1.ProxyPending, "has not sent extension configs (ECDS)"},
		{pod("ecds-nack", true), wasmev1.DeliveryECDS, wasmev1.ProxyRejected, "refused extension configs (ECDS): fetch failed"},
	} {
		got, msg := proxyState(snap, tc.pod, proxyTypes(tc.delivery), since)
		if got != tc.want || !strings.Contains(msg, tc.msg) || (tc.msg == "") != (msg == "") {
			t.Errorf("%s (%s): %s %q; want %s with %q", tc.pod.Name, tc.delivery, got, msg, tc.want, tc.msg)
		}
	}
	// A NACK message is bounded, as status must be.
	add("long", map[string]proxystatus.Resource{lds: {Sync: proxystatus.Error, Error: strings.Repeat("x", 10000)}})
	if _, msg := proxyState(snap, pod("long", true), proxyTypes(wasmev1.DeliveryMount), since); len(msg) > maxProxyMessage {
		t.Errorf("message of %d bytes, want at most %d", len(msg), maxProxyMessage)
	}
}
