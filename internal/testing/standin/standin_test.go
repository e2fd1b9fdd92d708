package standin

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

// The command line pilot-agent builds (pkg/envoy/proxy.go of the pinned Istio) with the
// injector's log levels, and what the stand-in must refuse.
func TestParseFlags(t *testing.T) {
	agent := []string{"-c", "etc/istio/proxy/envoy-rev.json", "--drain-time-s", "45", "--drain-strategy", "immediate",
		"--local-address-ip-version", "v4", "--file-flush-interval-msec", "1000", "--disable-hot-restart",
		"--allow-unknown-static-fields", "-l", "warning", "--component-log-level", "misc:error", "--skip-deprecated-logs", "--concurrency", "2"}
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"pilot-agent's", agent, ""},
		{"no bootstrap", []string{"--drain-time-s", "5"}, "-c (the bootstrap file) is required"},
		{"bootstrap override", append([]string{"--config-yaml", "{}"}, agent...), "--config-yaml"},
		{"unknown flag", append([]string{"--hot-restart-version"}, agent...), "unknown flag"},
		{"IPv6", append(agent, "--local-address-ip-version", "v6"), "IPv4 only"},
		{"bad drain strategy", append(agent, "--drain-strategy", "never"), "immediate or gradual"},
		{"stray argument", append(agent, "extra"), "unexpected arguments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := ParseFlags(tc.args)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if f.ConfigPath != "etc/istio/proxy/envoy-rev.json" || f.DrainTime != 45*time.Second || !f.AllowUnknownStaticFields || f.LogLevel != "warning" {
					t.Errorf("parsed %+v", f)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestParseBootstrapRefuses(t *testing.T) {
	base := `{"node":{"id":"sidecar~1.2.3.4~p.ns~ns.svc.cluster.local"},
 "admin":{"address":{"socket_address":{"address":"127.0.0.1","port_value":15000}}},
 "dynamic_resources":{"lds_config":{"ads":{}},"cds_config":{"ads":{}},
   "ads_config":{"api_type":"%s","grpc_services":[{"envoy_grpc":{"cluster_name":"xds-grpc"}}]}},
 "static_resources":{"clusters":[{"name":"xds-grpc","type":"STATIC","load_assignment":{"cluster_name":"xds-grpc",
   "endpoints":[{"lb_endpoints":[{"endpoint":{"address":{"pipe":{"path":"./etc/istio/proxy/XDS"}}}}]}]}}]}}`
	for _, tc := range []struct {
		name, apiType, wantErr string
	}{
		{"delta", "DELTA_GRPC", ""},
		{"state of the world", "GRPC", "delta ADS"},
		{"REST", "REST", "delta ADS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := &bootstrapv3.Bootstrap{}
			if err := protojson.Unmarshal([]byte(strings.Replace(base, "%s", tc.apiType, 1)), raw); err != nil {
				t.Fatal(err)
			}
			b, err := parseBootstrap(raw)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if b.XDSPipe != "./etc/istio/proxy/XDS" || b.AdminAddr != "127.0.0.1:15000" {
					t.Errorf("pipe %q admin %q", b.XDSPipe, b.AdminAddr)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
	if _, err := parseBootstrap(&bootstrapv3.Bootstrap{Node: &corev3.Node{}}); err == nil {
		t.Error("a bootstrap without node id was accepted")
	}
}

// Routes: what Istio's inbound and the bootstrap's static listeners use is matched as Envoy
// does; a match the stand-in cannot evaluate is refused instead of ignored.
func TestRoutes(t *testing.T) {
	rt := &router{vhosts: []vhost{
		{name: "exact", domains: []string{"details.bookinfo:9080"}, routes: []route{{path: "/health", cluster: "health"}}},
		{name: "any", domains: []string{"*"}, routes: []route{{prefix: "/healthz/ready", cluster: "agent"}, {prefix: "/", cluster: "inbound|9080||"}}},
	}}
	for _, tc := range []struct{ host, path, want string }{
		{"details.bookinfo:9080", "/health", "health"},
		{"details.bookinfo:9080", "/details/1", ""},
		{"10.0.0.1:15021", "/healthz/ready", "agent"},
		{"10.0.0.1:9080", "/details/1", "inbound|9080||"},
	} {
		r := httptest.NewRequest("GET", "http://"+tc.host+tc.path, nil)
		got, ok := rt.match(r)
		if got.cluster != tc.want || ok != (tc.want != "") {
			t.Errorf("%s%s -> %q, want %q", tc.host, tc.path, got.cluster, tc.want)
		}
	}
	_, err := readRoute(&routev3.Route{
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}, Headers: []*routev3.HeaderMatcher{{Name: "x"}}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "c"}}},
	})
	if err == nil || !strings.Contains(err.Error(), "not implemented") {
		t.Errorf("a header match: %v", err)
	}
}
