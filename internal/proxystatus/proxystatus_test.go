package proxystatus

import (
	"encoding/base64"
	"errors"
	"testing"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestPodOf(t *testing.T) {
	for _, tc := range []struct {
		id, pod, ns string
		ok          bool
	}{
		{"sidecar~10.0.0.7~details-v1-abc.bookinfo~bookinfo.svc.cluster.local", "details-v1-abc", "bookinfo", true},
		{"sidecar~10.0.0.7~web.v2-x.shop~shop.svc.cluster.local", "web.v2-x", "shop", true},
		{"router~10.0.0.8~gw-1.istio-system~istio-system.svc.cluster.local", "gw-1", "istio-system", true},
		{"details-v1-abc.bookinfo", "details-v1-abc", "bookinfo", true},
		{"sidecar~10.0.0.7~nodots~x.svc", "", "", false},
		{"a~b", "", "", false},
		{"nodots", "", "", false},
		{"sidecar~10.0.0.7~pod.~x.svc", "", "", false},
		{"not-a-node-id", "", "", false},
		{"", "", "", false},
	} {
		pod, ns, ok := PodOf(tc.id)
		if pod != tc.pod || ns != tc.ns || ok != tc.ok {
			t.Errorf("PodOf(%q) = %q, %q, %v; want %q, %q, %v", tc.id, pod, ns, ok, tc.pod, tc.ns, tc.ok)
		}
	}
}

func TestTokenSubject(t *testing.T) {
	jwt := func(payload string) string {
		return "e30." + base64.RawURLEncoding.EncodeToString([]byte(payload)) + ".sig"
	}
	for _, tc := range []struct {
		token, ns, name string
		ok              bool
	}{
		{jwt(`{"sub":"system:serviceaccount:wasme:wasme-operator"}`), "wasme", "wasme-operator", true},
		{jwt(`{"sub":"alice"}`), "", "", false},
		{jwt(`{"sub":"system:serviceaccount::x"}`), "", "", false},
		{jwt(`not json`), "", "", false},
		{"one.two", "", "", false},
		{"a.!!!.c", "", "", false},
	} {
		ns, name, err := tokenSubject(tc.token)
		if ns != tc.ns || name != tc.name || (err == nil) != tc.ok {
			t.Errorf("tokenSubject(%q) = %q, %q, %v; want %q, %q, ok=%v", tc.token, ns, name, err, tc.ns, tc.name, tc.ok)
		}
	}
}

func clientConfig(t *testing.T, id string, cfgs ...*statusv3.ClientConfig_GenericXdsConfig) *anypb.Any {
	t.Helper()
	a, err := anypb.New(&statusv3.ClientConfig{Node: &corev3.Node{Id: id}, GenericXdsConfigs: cfgs})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestDecode reads a syncz answer as istiod's StatusGen writes it: one ClientConfig per proxy,
// a GenericXdsConfig per type with its ConfigStatus, last send time and NACK details.
func TestDecode(t *testing.T) {
	sent := time.Date(2026, 12, 2, 18, 0, 0, 123456789, time.UTC)
	lds := func(st statusv3.ConfigStatus, errMsg string) *statusv3.ClientConfig_GenericXdsConfig {
		x := &statusv3.ClientConfig_GenericXdsConfig{TypeUrl: ListenerType, ConfigStatus: st, LastUpdated: timestamppb.New(sent)}
		if errMsg != "" {
			x.ErrorState = &adminv3.UpdateFailureState{Details: errMsg}
		}
		return x
	}
	resp := &discoveryv3.DiscoveryResponse{
		TypeUrl:      SynczType,
		ControlPlane: &corev3.ControlPlane{Identifier: `{"Component":"istiod","ID":"istiod-7c9f","Info":{}}`},
		Resources: []*anypb.Any{
			clientConfig(t, "a.ns", lds(statusv3.ConfigStatus_SYNCED, "")),
			clientConfig(t, "sidecar~10.0.0.2~b.ns~ns.svc.cluster.local", lds(statusv3.ConfigStatus_ERROR, "module missing")),
			clientConfig(t, "sidecar~1~a-vm-without-pod~x", lds(statusv3.ConfigStatus_SYNCED, "")),
		},
	}
	snap, err := Decode(resp)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Proxies) != 2 {
		t.Fatalf("%d proxies, want 2 (the VM has no pod): %+v", len(snap.Proxies), snap.Proxies)
	}
	a, ok := snap.Proxy("ns", "a")
	if !ok || a.Istiod != "istiod-7c9f" || a.Types[ListenerType] != (Resource{Sync: Synced, Sent: sent}) {
		t.Errorf("a = %+v", a)
	}
	b, _ := snap.Proxy("ns", "b")
	if b.Types[ListenerType].Sync != Error || b.Types[ListenerType].Error != "module missing" {
		t.Errorf("b = %+v", b)
	}
	if _, err := Decode(&discoveryv3.DiscoveryResponse{TypeUrl: ListenerType}); err == nil {
		t.Error("an answer of another type decoded")
	}
	bad := &discoveryv3.DiscoveryResponse{TypeUrl: SynczType, Resources: []*anypb.Any{{TypeUrl: "x", Value: []byte{0xff}}}}
	if _, err := Decode(bad); err == nil {
		t.Error("a resource that is not a ClientConfig decoded")
	}
}

func TestChangedAndSame(t *testing.T) {
	p := func(ns, pod string, s Sync) Proxy {
		return Proxy{ID: "sidecar~1~" + pod + "." + ns + "~d", Pod: pod, Namespace: ns, Types: map[string]Resource{ListenerType: {Sync: s}}}
	}
	snap := func(ps ...Proxy) *Snapshot {
		s := &Snapshot{Proxies: map[string]Proxy{}}
		for _, x := range ps {
			s.Proxies[x.Namespace+"/"+x.Pod] = x
		}
		return s
	}
	a := snap(p("x", "1", Synced), p("y", "1", Synced))
	for _, tc := range []struct {
		name string
		b    *Snapshot
		want map[string]bool
	}{
		{"same", snap(p("x", "1", Synced), p("y", "1", Synced)), map[string]bool{}},
		{"a NACK in y", snap(p("x", "1", Synced), p("y", "1", Error)), map[string]bool{"y": true}},
		{"x's proxy gone", snap(p("y", "1", Synced)), map[string]bool{"x": true}},
		{"a new proxy in z", snap(p("x", "1", Synced), p("y", "1", Synced), p("z", "1", Stale)), map[string]bool{"z": true}},
		{"istiod unreachable", &Snapshot{Err: errors.New("down")}, map[string]bool{"x": true, "y": true}},
	} {
		got := Changed(a, tc.b)
		if len(got) != len(tc.want) {
			t.Errorf("%s: Changed = %v, want %v", tc.name, got, tc.want)
			continue
		}
		for k := range tc.want {
			if !got[k] {
				t.Errorf("%s: Changed = %v, want %v", tc.name, got, tc.want)
			}
		}
		if Same(a, tc.b) != (len(tc.want) == 0) {
			t.Errorf("%s: Same = %v", tc.name, Same(a, tc.b))
		}
	}
}

// TestDecodeHTTP reads istiod's /debug/syncz JSON (pilot/pkg/xds/debug.go SyncStatus) into the
// same states the xDS debug type gives.
func TestDecodeHTTP(t *testing.T) {
	body := []byte(`[
	 {"cluster_id":"Kubernetes","proxy":"a.ns","resources":{"` + ListenerType + `":{"sent":"n1","acked":"n1","sentTime":"2026-12-02T18:00:00.5Z"}}},
	 {"proxy":"b.ns","resources":{"` + ListenerType + `":{"sent":"n2","acked":"n1","sentTime":"2026-12-02T18:00:01Z","lastError":"module missing"}}},
	 {"proxy":"c.ns","resources":{"` + ListenerType + `":{"sent":"n3","acked":"n2"},"` + ExtensionConfigType + `":{}}},
	 {"proxy":"router~1~x~y~z"}
	]`)
	snap, n, err := DecodeHTTP(body)
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 || len(snap.Proxies) != 3 {
		t.Fatalf("%d entries, %d proxies: %+v", n, len(snap.Proxies), snap.Proxies)
	}
	want := map[string]Sync{"a": Synced, "b": Error, "c": Stale}
	for pod, s := range want {
		p, ok := snap.Proxy("ns", pod)
		if !ok || p.Types[ListenerType].Sync != s {
			t.Errorf("%s: %+v, want LDS %s", pod, p, s)
		}
	}
	if a, _ := snap.Proxy("ns", "a"); !a.Types[ListenerType].Sent.Equal(time.Date(2026, 12, 2, 18, 0, 0, 5e8, time.UTC)) {
		t.Errorf("a sent %v", a.Types[ListenerType].Sent)
	}
	if b, _ := snap.Proxy("ns", "b"); b.Types[ListenerType].Error != "module missing" {
		t.Errorf("b = %+v", b)
	}
	if c, _ := snap.Proxy("ns", "c"); c.Types[ExtensionConfigType].Sync != NotSent {
		t.Errorf("c = %+v", c)
	}
	for _, bad := range []string{``, `{}`, `[{"proxy":1}]`, `not json`} {
		if _, _, err := DecodeHTTP([]byte(bad)); err == nil {
			t.Errorf("DecodeHTTP(%q) succeeded", bad)
		}
	}
}
