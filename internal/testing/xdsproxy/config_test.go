package xdsproxy

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	udpatypev1 "github.com/cncf/xds/go/udpa/type/v1"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	wasmextv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

const cacheDir = "/var/local/lib/wasme-cache"

// fixture writes a fake module into a temp node cache and returns its directory and name.
func fixture(t *testing.T) (dir, sum string) {
	t.Helper()
	dir = t.TempDir()
	mod := []byte("\x00asm\x01\x00\x00\x00")
	s := sha256.Sum256(mod)
	sum = hex.EncodeToString(s[:])
	if err := os.WriteFile(filepath.Join(dir, sum), mod, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, sum
}

func wasmFilter(sum string, mutate func(*wasmv3.Wasm)) *wasmv3.Wasm {
	cfg, _ := anypb.New(wrapperspb.String(`{"name":"hello","value":"there"}`))
	w := &wasmv3.Wasm{Config: &wasmextv3.PluginConfig{
		Name: "f.ns", RootId: "add_header", Configuration: cfg,
		Vm: &wasmextv3.PluginConfig_VmConfig{VmConfig: &wasmextv3.VmConfig{
			VmId: "f.ns", Runtime: "envoy.wasm.runtime.v8",
			Code: &corev3.AsyncDataSource{Specifier: &corev3.AsyncDataSource_Local{
				Local: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: cacheDir + "/" + sum}},
			}},
		}},
	}}
	if mutate != nil {
		mutate(w)
	}
	return w
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// inbound is Istio's virtualInbound listener with one chain for port 9080 holding filters.
func inbound(t *testing.T, filters ...*hcmv3.HttpFilter) []*listenerv3.Listener {
	t.Helper()
	filters = append(filters, &hcmv3.HttpFilter{Name: "envoy.filters.http.router",
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})}})
	hcm := &hcmv3.HttpConnectionManager{StatPrefix: "inbound_0.0.0.0_9080", HttpFilters: filters}
	return []*listenerv3.Listener{
		{Name: "0.0.0.0_15001", TrafficDirection: corev3.TrafficDirection_OUTBOUND},
		{Name: "virtualInbound", TrafficDirection: corev3.TrafficDirection_INBOUND, FilterChains: []*listenerv3.FilterChain{
			{Name: "0.0.0.0_9080", FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(9080), TransportProtocol: "tls"}},
			{
				Name:             "0.0.0.0_9080",
				FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(9080), TransportProtocol: "raw_buffer", ApplicationProtocols: []string{"http/1.1", "h2c"}},
				Filters:          []*listenerv3.Filter{{Name: HCMFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)}}},
			},
		}},
	}
}

func httpWasm(t *testing.T, w *wasmv3.Wasm) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: WasmFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, w)}}
}

func TestBuildChain(t *testing.T) {
	dir, sum := fixture(t)
	c, err := buildChain(inbound(t, httpWasm(t, wasmFilter(sum, nil))), 9080, PrefixResolver(cacheDir, dir))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Wasm) != 1 || c.Listener != "virtualInbound" {
		t.Fatalf("chain = %+v", c)
	}
	w := c.Wasm[0]
	if w.RootID != "add_header" || string(w.Configuration) != `{"name":"hello","value":"there"}` || w.Path != filepath.Join(dir, sum) {
		t.Errorf("filter = %+v", w)
	}
	if got := strings.Join(c.HTTPFilters, ","); got != WasmFilterName+",envoy.filters.http.router" {
		t.Errorf("HTTP filters %s", got)
	}
}

// Istio 1.7-1.9 wrapped the config in a TypedStruct; Envoy reads that as the Wasm config.
func TestBuildChainTypedStruct(t *testing.T) {
	dir, sum := fixture(t)
	js, err := protojson.Marshal(wasmFilter(sum, nil))
	if err != nil {
		t.Fatal(err)
	}
	v := &structpb.Struct{}
	if err := protojson.Unmarshal(js, v); err != nil {
		t.Fatal(err)
	}
	ts := &udpatypev1.TypedStruct{TypeUrl: wasmTypeURL, Value: v}
	hf := &hcmv3.HttpFilter{Name: WasmFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, ts)}}
	c, err := buildChain(inbound(t, hf), 9080, PrefixResolver(cacheDir, dir))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Wasm) != 1 || string(c.Wasm[0].Configuration) != `{"name":"hello","value":"there"}` {
		t.Fatalf("chain = %+v", c)
	}
}

// Every Wasm filter the proxy cannot run as configured fails the update; none is skipped.
func TestBuildChainRefuses(t *testing.T) {
	dir, sum := fixture(t)
	other := strings.Repeat("0", 64)
	if err := os.WriteFile(filepath.Join(dir, other), []byte("\x00asm\x01\x00\x00\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	setCode := func(src *corev3.AsyncDataSource) func(*wasmv3.Wasm) {
		return func(w *wasmv3.Wasm) { w.Config.GetVmConfig().Code = src }
	}
	local := func(name string) *corev3.AsyncDataSource {
		return &corev3.AsyncDataSource{Specifier: &corev3.AsyncDataSource_Local{Local: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: name}}}}
	}
	for _, tc := range []struct {
		name   string
		filter *hcmv3.HttpFilter
		want   string
	}{
		{"remote code", httpWasm(t, wasmFilter(sum, setCode(&corev3.AsyncDataSource{Specifier: &corev3.AsyncDataSource_Remote{Remote: &corev3.RemoteDataSource{
			HttpUri: &corev3.HttpUri{Uri: "https://registry.example.com/f.wasm", HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: "c"}, Timeout: durationpb.New(time.Second)}, Sha256: sum,
		}}}))), "only code.local"},
		{"inline code", httpWasm(t, wasmFilter(sum, setCode(&corev3.AsyncDataSource{Specifier: &corev3.AsyncDataSource_Local{Local: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte("x")}}}}))), "not a filename"},
		{"outside the cache", httpWasm(t, wasmFilter(sum, setCode(local("/etc/"+sum)))), "not a file directly under"},
		{"path traversal", httpWasm(t, wasmFilter(sum, setCode(local(cacheDir+"/../"+sum)))), "not a file directly under"},
		{"missing module", httpWasm(t, wasmFilter(sum, setCode(local(cacheDir+"/"+strings.Repeat("a", 64))))), "reading the module"},
		{"digest mismatch", httpWasm(t, wasmFilter(sum, setCode(local(cacheDir+"/"+other)))), "does not hash to its name"},
		{"null runtime", httpWasm(t, wasmFilter(sum, func(w *wasmv3.Wasm) { w.Config.GetVmConfig().Runtime = "envoy.wasm.runtime.null" })), "runtime"},
		{"unknown config type", httpWasm(t, wasmFilter(sum, func(w *wasmv3.Wasm) { w.Config.Configuration = mustAny(t, wrapperspb.Int64(1)) })), "not supported"},
		{"ECDS", &hcmv3.HttpFilter{Name: WasmFilterName, ConfigType: &hcmv3.HttpFilter_ConfigDiscovery{ConfigDiscovery: &corev3.ExtensionConfigSource{
			ConfigSource: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}, TypeUrls: []string{wasmTypeURL},
		}}}, "ECDS"},
		{"wasm name, other type", &hcmv3.HttpFilter{Name: WasmFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})}}, "but its config is"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A good filter first: the bad one must fail the update anyway.
			_, err := buildChain(inbound(t, httpWasm(t, wasmFilter(sum, nil)), tc.filter), 9080, PrefixResolver(cacheDir, dir))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestFindChainErrors(t *testing.T) {
	if _, err := buildChain(nil, 9080, PrefixResolver(cacheDir, t.TempDir())); err == nil || !strings.Contains(err.Error(), "no inbound listener") {
		t.Errorf("no listeners: %v", err)
	}
	if _, err := buildChain(inbound(t), 9999, PrefixResolver(cacheDir, t.TempDir())); err == nil || !strings.Contains(err.Error(), "no HTTP filter chain for port 9999") {
		t.Errorf("wrong port: %v", err)
	}
}
