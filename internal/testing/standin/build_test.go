package standin

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbaccfgv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// hcmChain is a filter chain for port with an HTTP connection manager routing everything to
// cluster, with the given HTTP filters before the router.
func hcmChain(t *testing.T, name string, port uint32, filters ...*hcmv3.HttpFilter) *listenerv3.FilterChain {
	t.Helper()
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name: "inbound|" + name,
			VirtualHosts: []*routev3.VirtualHost{{Name: "any", Domains: []string{"*"}, Routes: []*routev3.Route{{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "inbound|9080||"}}},
			}}}},
		}},
		HttpFilters: append(filters, &hcmv3.HttpFilter{Name: "envoy.filters.http.router",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})}}),
	}
	fc := &listenerv3.FilterChain{Name: name, Filters: []*listenerv3.Filter{{
		Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)},
	}}}
	if port != 0 {
		fc.FilterChainMatch = &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(port)}
	}
	return fc
}

func ecdsFilter(name string, types ...string) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_ConfigDiscovery{ConfigDiscovery: &corev3.ExtensionConfigSource{
		ConfigSource: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
		TypeUrls:     types,
	}}}
}

func testServer(t *testing.T) *Server {
	t.Helper()
	s, err := New(&Bootstrap{Node: &corev3.Node{Id: "sidecar~127.0.0.1~p.ns~ns.svc.cluster.local"}, Clusters: map[string]*Cluster{}},
		&Flags{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.wc.Close(context.Background()) })
	return s
}

func inbound(chains ...*listenerv3.FilterChain) *listenerv3.Listener {
	return &listenerv3.Listener{Name: virtualInbound, TrafficDirection: corev3.TrafficDirection_INBOUND,
		BindToPort: wrapperspb.Bool(false), FilterChains: chains}
}

// build decides what the stand-in runs or refuses: a Wasm filter outside the inbound chains
// is refused (Envoy would run it), a chain whose extension config has not arrived warms, an
// extension config of a type the filter does not list is refused, istio-agent's deny-all RBAC
// answers 403, and plaintext HTTP chains are preferred over TLS and TCP ones for a port.
func TestBuild(t *testing.T) {
	ctx := context.Background()
	wasmType := "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
	rbacType := "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
	deny := &corev3.TypedExtensionConfig{Name: "wasme.f", TypedConfig: mustAny(t, &rbacv3.RBAC{Rules: &rbaccfgv3.RBAC{}})}
	allow := &corev3.TypedExtensionConfig{Name: "wasme.f", TypedConfig: mustAny(t, &rbacv3.RBAC{})}
	inlineWasm := &hcmv3.HttpFilter{Name: "envoy.filters.http.wasm", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &wasmv3.Wasm{})}}

	for _, tc := range []struct {
		name      string
		listeners []*listenerv3.Listener
		ecds      map[string]*corev3.TypedExtensionConfig
		wantErr   string
		warming   bool
		status    int // of a request on port 9080
	}{
		{name: "plain inbound chain", listeners: []*listenerv3.Listener{inbound(hcmChain(t, "http", 9080))}, status: http.StatusServiceUnavailable},
		{name: "Wasm on an outbound listener", listeners: []*listenerv3.Listener{
			inbound(hcmChain(t, "http", 9080)),
			{Name: "0.0.0.0_9080", BindToPort: wrapperspb.Bool(false), FilterChains: []*listenerv3.FilterChain{hcmChain(t, "out", 0, inlineWasm)}},
		}, wantErr: "runs Wasm filters of the inbound sidecar chains"},
		{name: "ECDS not arrived", listeners: []*listenerv3.Listener{inbound(hcmChain(t, "http", 9080, ecdsFilter("wasme.f", wasmType, rbacType)))}, warming: true},
		{name: "ECDS type not listed", listeners: []*listenerv3.Listener{inbound(hcmChain(t, "http", 9080, ecdsFilter("wasme.f", wasmType)))},
			ecds: map[string]*corev3.TypedExtensionConfig{"wasme.f": deny}, wantErr: "not one of the filter's type_urls"},
		{name: "istio-agent's deny-all", listeners: []*listenerv3.Listener{inbound(hcmChain(t, "http", 9080, ecdsFilter("wasme.f", wasmType, rbacType)))},
			ecds: map[string]*corev3.TypedExtensionConfig{"wasme.f": deny}, status: http.StatusForbidden},
		{name: "istio-agent's allow-all", listeners: []*listenerv3.Listener{inbound(hcmChain(t, "http", 9080, ecdsFilter("wasme.f", wasmType, rbacType)))},
			ecds: map[string]*corev3.TypedExtensionConfig{"wasme.f": allow}, status: http.StatusServiceUnavailable},
		{name: "HTTP over TLS and TCP", listeners: []*listenerv3.Listener{inbound(
			func() *listenerv3.FilterChain {
				fc := hcmChain(t, "tls", 9080, ecdsFilter("wasme.f", wasmType, rbacType))
				fc.TransportSocket = &corev3.TransportSocket{Name: "tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(t, &tlsv3.DownstreamTlsContext{})}}
				return fc
			}(),
			&listenerv3.FilterChain{Name: "tcp", FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(9080)},
				Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{
					TypedConfig: mustAny(t, &tcpproxyv3.TcpProxy{ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "inbound|9080||"}})}}}},
			hcmChain(t, "http", 9080),
		)}, status: http.StatusServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testServer(t)
			ls := map[string]*listenerv3.Listener{}
			for _, l := range tc.listeners {
				ls[l.GetName()] = l
			}
			snap, need, err := s.build(ctx, ls, map[string]string{}, tc.ecds, map[string]string{})
			switch {
			case tc.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			case tc.warming:
				if !errors.Is(err, errWarming) || !slices.Contains(need, "wasme.f") {
					t.Fatalf("err = %v need %v, want warming on wasme.f", err, need)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			defer func() {
				for _, p := range snap.plugins {
					_ = p.Close(ctx)
				}
			}()
			ch := snap.inbound[9080]
			if ch == nil || ch.handler == nil {
				t.Fatalf("chain for 9080: %+v", ch)
			}
			if ch.name != "http" {
				t.Fatalf("picked chain %s, want the plaintext HTTP one", ch.name)
			}
			// No cluster inbound|9080|| here: a request that passes the filters gets 503 from
			// the router, one the deny-all stops gets 403.
			rec := httptest.NewRecorder()
			ch.handler.ServeHTTP(rec, httptest.NewRequest("GET", "http://10.0.0.1:9080/details/1", nil))
			if rec.Code != tc.status {
				t.Errorf("status %d (%s), want %d", rec.Code, strings.TrimSpace(rec.Body.String()), tc.status)
			}
		})
	}
}
