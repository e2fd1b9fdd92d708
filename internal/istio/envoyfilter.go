package istio

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"path"
	"strings"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	wasmextv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	apinetworking "istio.io/api/networking/v1alpha3"
	networkingv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	wasmev1 "wasme.io/wasme/api/v1"
)

// Shape is the form of the Wasm HTTP filter inside an EnvoyFilter patch, which changed as
// Istio and Envoy moved from envoy-wasm to upstream Envoy.
type Shape int

const (
	// LegacyShape (Istio 1.5, 1.6): untyped "config:" and the old filter names; the seed's YAML.
	LegacyShape Shape = iota
	// TypedStructShape (Istio 1.7 to 1.9): a udpa TypedStruct wrapping the v3 Wasm filter.
	TypedStructShape
	// TypedShape (Istio 1.10 on): plain typed_config and the current filter names.
	TypedShape
)

// ShapeFor is the shape an Istio version reads.
func ShapeFor(v Version) Shape {
	switch {
	case v.Less(Version{1, 7}):
		return LegacyShape
	case v.Less(Version{1, 10}):
		return TypedStructShape
	}
	return TypedShape
}

func (s Shape) String() string {
	return [...]string{"legacy config", "TypedStruct", "typed_config"}[s]
}

// Filter names and types Envoy knows the Wasm filter and its neighbours by.
const (
	WasmFilterName = "envoy.filters.http.wasm"
	WasmTypeURL    = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
	// RBACTypeURL is the RBAC filter istio-agent serves in a Wasm filter's place when it
	// cannot fetch or verify the module (allow-all or deny-all by the fail strategy); an ECDS
	// filter must accept it, as Istio's own WasmPlugins do, or Envoy rejects that
	// substitute and the listener stays warming instead of failing closed.
	RBACTypeURL           = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
	TypedStructURL        = "type.googleapis.com/udpa.type.v1.TypedStruct"
	V8Runtime             = "envoy.wasm.runtime.v8"
	legacyHCM             = "envoy.http_connection_manager"
	legacyRouter          = "envoy.router"
	currentHCM            = "envoy.filters.network.http_connection_manager"
	currentRouter         = "envoy.filters.http.router"
	FilterDeploymentLabel = "wasme.io/filterdeployment"
)

// Filter is everything an EnvoyFilter for one workload depends on.
type Filter struct {
	// Name and Namespace of the EnvoyFilter: "<workload>-<id>" in the workload's namespace.
	Name, Namespace string
	// WorkloadLabels select the workload's pods (its pod template labels).
	WorkloadLabels map[string]string
	// ID is the Wasm plugin name and VM id.
	ID string
	// RootID is the filter's root context id.
	RootID string
	// ModuleSHA256 is the hex sha256 of the module, its file name in the node cache.
	ModuleSHA256 string
	// Config is what the filter receives in proxy_on_configure.
	Config wasmev1.FilterConfig
	// Context is the EnvoyFilter match context: SIDECAR_INBOUND, SIDECAR_OUTBOUND, GATEWAY or ANY.
	Context string
	// Shape is the patch form for the cluster's Istio version.
	Shape Shape
	// Owner becomes the EnvoyFilter's controller; nil for none (wasme deploy).
	Owner *metav1.OwnerReference
	// CacheDir is the node cache's directory, mounted into the sidecars at the same path;
	// empty means wasmev1.CacheDir.
	CacheDir string
	// ModuleURL, when set, is where istio-agent fetches the module over HTTP (the node-local
	// cache), and the filter is delivered over ECDS instead of loading CacheDir's file.
	ModuleURL string
}

// ModuleURL is the node cache's address for a module, given the cache Service's base URL
// ("http://wasme-cache.wasme.svc:9979").
func ModuleURL(base, sha256Hex string) string {
	return strings.TrimSuffix(base, "/") + "/sha256/" + sha256Hex
}

// ExtensionConfigName is the ECDS resource a FilterDeployment's filter is served as. Istio's
// own WasmPlugins are "<namespace>.<name>"; the filter id already defaults to that, and the
// prefix keeps wasme's apart from them.
func ExtensionConfigName(id string) string { return "wasme." + id }

// remoteFetchTimeout bounds istio-agent's fetch of a module from the node cache.
const remoteFetchTimeout = 30 * time.Second

// BuildECDSEnvoyFilter returns the EnvoyFilter that delivers the filter over ECDS: an
// EXTENSION_CONFIG holding the Wasm filter, whose code is the module's URL on the node cache
// with its sha256 (istio-agent fetches it, checks the digest and rewrites the config to a
// local file), and an HTTP_FILTER before the router that only names that extension config. A
// new module or config then changes the extension config alone, never the listener.
func BuildECDSEnvoyFilter(f Filter) (*networkingv1alpha3.EnvoyFilter, error) {
	if f.ModuleURL == "" {
		return nil, fmt.Errorf("ECDS delivery needs the module's URL")
	}
	if f.Shape != TypedShape {
		return nil, fmt.Errorf("ECDS delivery needs Istio 1.10 or later (typed_config)")
	}
	ef, err := BuildEnvoyFilter(f)
	if err != nil {
		return nil, err
	}
	name := ExtensionConfigName(f.ID)
	filterRef, err := structpb.NewStruct(map[string]any{
		"name": name,
		"config_discovery": map[string]any{
			"config_source": map[string]any{"ads": map[string]any{}},
			"type_urls":     []any{WasmTypeURL, RBACTypeURL},
		},
	})
	if err != nil {
		return nil, err
	}
	ext := ef.Spec.ConfigPatches[0].Patch.Value
	ext.Fields["name"] = structpb.NewStringValue(name)
	ef.Spec.ConfigPatches[0].Patch.Value = filterRef
	ef.Spec.ConfigPatches = append([]*apinetworking.EnvoyFilter_EnvoyConfigObjectPatch{{
		ApplyTo: apinetworking.EnvoyFilter_EXTENSION_CONFIG,
		Patch:   &apinetworking.EnvoyFilter_Patch{Operation: apinetworking.EnvoyFilter_Patch_ADD, Value: ext},
	}}, ef.Spec.ConfigPatches...)
	return ef, nil
}

// ModulePath is where sidecars find a module on the node, in the cache directory cacheDir
// (empty: wasmev1.CacheDir).
func ModulePath(cacheDir, sha256Hex string) string {
	return path.Join(cmp.Or(cacheDir, wasmev1.CacheDir), sha256Hex)
}

// BuildEnvoyFilter returns the EnvoyFilter that inserts the filter before the router of the
// workload's HTTP connection managers. The filter config is built with Envoy's own types and
// validated before it is turned into the patch.
func BuildEnvoyFilter(f Filter) (*networkingv1alpha3.EnvoyFilter, error) {
	if f.ID == "" {
		return nil, fmt.Errorf("the filter id is empty")
	}
	if !wasmev1.IsSHA256Hex(f.ModuleSHA256) {
		return nil, fmt.Errorf("module digest %q is not a sha256 hex string", f.ModuleSHA256)
	}
	ctx, ok := apinetworking.EnvoyFilter_PatchContext_value[f.Context]
	if !ok {
		return nil, fmt.Errorf("unknown patch context %q", f.Context)
	}
	value, err := patchValue(f)
	if err != nil {
		return nil, err
	}
	hcm, router := currentHCM, currentRouter
	if f.Shape != TypedShape {
		hcm, router = legacyHCM, legacyRouter
	}
	ef := &networkingv1alpha3.EnvoyFilter{
		TypeMeta: metav1.TypeMeta{APIVersion: "networking.istio.io/v1alpha3", Kind: "EnvoyFilter"},
		ObjectMeta: metav1.ObjectMeta{
			Name:      f.Name,
			Namespace: f.Namespace,
		},
	}
	if f.Owner != nil {
		if len(validation.IsValidLabelValue(f.Owner.Name)) == 0 {
			ef.Labels = map[string]string{FilterDeploymentLabel: f.Owner.Name}
		}
		ef.OwnerReferences = []metav1.OwnerReference{*f.Owner}
	}
	ef.Spec.WorkloadSelector = &apinetworking.WorkloadSelector{Labels: maps.Clone(f.WorkloadLabels)}
	ef.Spec.ConfigPatches = []*apinetworking.EnvoyFilter_EnvoyConfigObjectPatch{{
		ApplyTo: apinetworking.EnvoyFilter_HTTP_FILTER,
		Match: &apinetworking.EnvoyFilter_EnvoyConfigObjectMatch{
			Context: apinetworking.EnvoyFilter_PatchContext(ctx),
			ObjectTypes: &apinetworking.EnvoyFilter_EnvoyConfigObjectMatch_Listener{
				Listener: &apinetworking.EnvoyFilter_ListenerMatch{
					FilterChain: &apinetworking.EnvoyFilter_ListenerMatch_FilterChainMatch{
						Filter: &apinetworking.EnvoyFilter_ListenerMatch_FilterMatch{
							Name:      hcm,
							SubFilter: &apinetworking.EnvoyFilter_ListenerMatch_SubFilterMatch{Name: router},
						},
					},
				},
			},
		},
		Patch: &apinetworking.EnvoyFilter_Patch{
			Operation: apinetworking.EnvoyFilter_Patch_INSERT_BEFORE,
			Value:     value,
		},
	}}
	return ef, nil
}

// WasmFilter is the v3 Wasm filter config, validated.
func WasmFilter(f Filter) (*wasmv3.Wasm, error) {
	w := &wasmv3.Wasm{Config: &wasmextv3.PluginConfig{
		Name:   f.ID,
		RootId: f.RootID,
		Vm: &wasmextv3.PluginConfig_VmConfig{VmConfig: &wasmextv3.VmConfig{
			VmId:    f.ID,
			Runtime: V8Runtime,
			Code:    code(f),
		}},
	}}
	if len(f.Config.Value) > 0 {
		cfg, err := configAny(f.Config)
		if err != nil {
			return nil, err
		}
		w.Config.Configuration = cfg
	}
	if err := w.ValidateAll(); err != nil {
		return nil, fmt.Errorf("invalid Wasm filter config: %w", err)
	}
	typed, err := anypb.New(w)
	if err != nil {
		return nil, err
	}
	hf := &hcmv3.HttpFilter{Name: WasmFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: typed}}
	if err := hf.ValidateAll(); err != nil {
		return nil, fmt.Errorf("invalid HTTP filter: %w", err)
	}
	return w, nil
}

// code is where the Wasm VM gets its module: the node cache's file, or, for ECDS, its URL.
func code(f Filter) *corev3.AsyncDataSource {
	if f.ModuleURL == "" {
		return &corev3.AsyncDataSource{Specifier: &corev3.AsyncDataSource_Local{
			Local: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: ModulePath(f.CacheDir, f.ModuleSHA256)}},
		}}
	}
	return &corev3.AsyncDataSource{Specifier: &corev3.AsyncDataSource_Remote{Remote: &corev3.RemoteDataSource{
		// Envoy never uses this cluster: istio-agent replaces the remote source with the file
		// it fetched before the config reaches Envoy. Istio names the URL's host the same way.
		HttpUri: &corev3.HttpUri{Uri: f.ModuleURL, HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: clusterFor(f.ModuleURL)},
			Timeout: durationpb.New(remoteFetchTimeout)},
		Sha256: f.ModuleSHA256,
	}}}
}

func clusterFor(rawURL string) string {
	if u, err := url.Parse(rawURL); err == nil && u.Host != "" {
		return u.Host
	}
	return rawURL
}

func configAny(c wasmev1.FilterConfig) (*anypb.Any, error) {
	var m proto.Message
	switch c.TypeURL {
	case wasmev1.StringValueType:
		m = wrapperspb.String(string(c.Value))
	case wasmev1.BytesValueType:
		m = wrapperspb.Bytes(c.Value)
	case wasmev1.StructType:
		s := &structpb.Struct{}
		if err := protojson.Unmarshal(c.Value, s); err != nil {
			return nil, fmt.Errorf("filter config: %w", err)
		}
		m = s
	default:
		return nil, fmt.Errorf("filter config: unsupported type %q", c.TypeURL)
	}
	return anypb.New(m)
}

// patchValue is the HTTP filter, as the Struct an EnvoyFilter patch carries, in f.Shape.
func patchValue(f Filter) (*structpb.Struct, error) {
	w, err := WasmFilter(f)
	if err != nil {
		return nil, err
	}
	wasmJSON, err := toMap(w)
	if err != nil {
		return nil, err
	}
	var value map[string]any
	switch f.Shape {
	case LegacyShape:
		// envoy-wasm read the plugin config untyped, and its configuration as a plain string.
		plugin, _ := wasmJSON["config"].(map[string]any)
		if len(f.Config.Value) > 0 {
			if !utf8.Valid(f.Config.Value) {
				return nil, fmt.Errorf("filter config: Istio before 1.7 passes configuration as a string, and this one is not UTF-8")
			}
			plugin["configuration"] = string(f.Config.Value)
		}
		value = map[string]any{"name": WasmFilterName, "config": map[string]any{"config": plugin}}
	case TypedStructShape:
		value = map[string]any{"name": WasmFilterName, "typedConfig": map[string]any{
			"@type": TypedStructURL, "typeUrl": WasmTypeURL, "value": wasmJSON,
		}}
	default:
		typed := map[string]any{"@type": WasmTypeURL}
		maps.Copy(typed, wasmJSON)
		value = map[string]any{"name": WasmFilterName, "typed_config": typed}
	}
	return structpb.NewStruct(value)
}

func toMap(m proto.Message) (map[string]any, error) {
	b, err := protojson.Marshal(m)
	if err != nil {
		return nil, err
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, err
	}
	return out, nil
}
