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
	// Placements, when set, replace Context: one insertion each, in its context and, for a
	// non-zero Port, on that port only.
	Placements []Placement
	// Phase places the filter among Istio's own filters; empty is UNSPECIFIED.
	Phase wasmev1.Phase
	// Priority, when set, is the EnvoyFilter's spec.priority, the order in which istiod
	// applies it among the EnvoyFilters of the workload (see ChainPriority).
	Priority *int32
	// FailStrategy is spec.filter.failStrategy; empty is FailClose.
	FailStrategy wasmev1.FailStrategy
	// FailurePolicy says the proxies read Envoy's failure_policy (Istio 1.23 on); otherwise
	// FailOpen is the older fail_open and FailReload cannot be expressed.
	FailurePolicy bool
	// Env are the VM's environment variables.
	Env []wasmev1.EnvVar
}

// Placement is one insertion point of a filter: an EnvoyFilter match context and a port (0: any).
type Placement struct {
	Context string
	Port    uint32
}

// FailurePolicySince is the first Istio whose Envoy reads the Wasm failure_policy.
var FailurePolicySince = Version{1, 23}

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
			// As istiod's own WasmPlugins: Envoy waits for the extension config before the
			// listener serves, and accepts the RBAC filter istio-agent puts in its place when
			// it cannot fetch the module (allow-all or deny-all, by the fail strategy).
			"config_source": map[string]any{"ads": map[string]any{}, "initial_fetch_timeout": "0s"},
			"type_urls":     []any{WasmTypeURL, RBACTypeURL},
		},
	})
	if err != nil {
		return nil, err
	}
	ext := proto.Clone(ef.Spec.ConfigPatches[0].Patch.Value).(*structpb.Struct)
	ext.Fields["name"] = structpb.NewStringValue(name)
	for _, cp := range ef.Spec.ConfigPatches {
		cp.Patch.Value = proto.Clone(filterRef).(*structpb.Struct)
	}
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
	if err := CheckControls(f); err != nil {
		return nil, err
	}
	before := !headOfChain(f.Phase)
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
	if f.Priority != nil {
		ef.Spec.Priority = *f.Priority
	}
	placements := f.Placements
	if len(placements) == 0 {
		placements = []Placement{{Context: f.Context}}
	}
	for _, pl := range placements {
		ctx, ok := apinetworking.EnvoyFilter_PatchContext_value[pl.Context]
		if !ok {
			return nil, fmt.Errorf("unknown patch context %q", pl.Context)
		}
		match := &apinetworking.EnvoyFilter_ListenerMatch_FilterMatch{Name: hcm}
		op := apinetworking.EnvoyFilter_Patch_INSERT_FIRST
		if before {
			match.SubFilter = &apinetworking.EnvoyFilter_ListenerMatch_SubFilterMatch{Name: router}
			op = apinetworking.EnvoyFilter_Patch_INSERT_BEFORE
		}
		ef.Spec.ConfigPatches = append(ef.Spec.ConfigPatches, &apinetworking.EnvoyFilter_EnvoyConfigObjectPatch{
			ApplyTo: apinetworking.EnvoyFilter_HTTP_FILTER,
			Match: &apinetworking.EnvoyFilter_EnvoyConfigObjectMatch{
				Context: apinetworking.EnvoyFilter_PatchContext(ctx),
				ObjectTypes: &apinetworking.EnvoyFilter_EnvoyConfigObjectMatch_Listener{
					Listener: &apinetworking.EnvoyFilter_ListenerMatch{
						PortNumber:  pl.Port,
						FilterChain: &apinetworking.EnvoyFilter_ListenerMatch_FilterChainMatch{Filter: match},
					},
				},
			},
			Patch: &apinetworking.EnvoyFilter_Patch{Operation: op, Value: proto.Clone(value).(*structpb.Struct)},
		})
	}
	return ef, nil
}

// CheckControls refuses the placement and failure settings of f that its Istio (f.Shape,
// f.FailurePolicy) cannot express. The operator calls it as soon as it knows the version, so
// such a spec stalls before anything is fetched or written.
func CheckControls(f Filter) error {
	if headOfChain(f.Phase) && f.Shape != TypedShape {
		return fmt.Errorf("phase %s needs Istio 1.10 or later", f.Phase)
	}
	if f.Priority != nil && f.Shape != TypedShape {
		return fmt.Errorf("EnvoyFilter priorities need Istio 1.10 or later")
	}
	switch f.FailStrategy {
	case "", wasmev1.FailClose, wasmev1.FailOpen:
	case wasmev1.FailReload:
		if !f.FailurePolicy {
			return fmt.Errorf("failStrategy FailReload needs Istio %s or later", FailurePolicySince)
		}
	default:
		return fmt.Errorf("unknown failStrategy %q, must be one of FailClose, FailOpen, FailReload", f.FailStrategy)
	}
	return nil
}

// headOfChain tells whether a phase's filters go first in the HTTP filter chain (AUTHN,
// AUTHZ), rather than just before the router (STATS, UNSPECIFIED). The head and the router
// are the only places every HTTP connection manager istiod builds has: an anchor on one of
// Istio's authn, RBAC or stats filters would drop the filter from chains without that filter.
func headOfChain(p wasmev1.Phase) bool { return p == wasmev1.PhaseAuthN || p == wasmev1.PhaseAuthZ }

// WasmFilter is the v3 Wasm filter config, validated.
func WasmFilter(f Filter) (*wasmv3.Wasm, error) {
	vm := &wasmextv3.VmConfig{VmId: f.ID, Runtime: V8Runtime, Code: code(f)}
	if len(f.Env) > 0 {
		ev := &wasmextv3.EnvironmentVariables{}
		for _, e := range f.Env {
			if e.ValueFrom == wasmev1.EnvHost {
				ev.HostEnvKeys = append(ev.HostEnvKeys, e.Name)
				continue
			}
			if ev.KeyValues == nil {
				ev.KeyValues = map[string]string{}
			}
			ev.KeyValues[e.Name] = e.Value
		}
		vm.EnvironmentVariables = ev
	}
	w := &wasmv3.Wasm{Config: &wasmextv3.PluginConfig{
		Name:   f.ID,
		RootId: f.RootID,
		Vm:     &wasmextv3.PluginConfig_VmConfig{VmConfig: vm},
	}}
	switch f.FailStrategy {
	case "", wasmev1.FailClose:
		// Envoy's default; left out so that configs without a strategy stay as they were.
	case wasmev1.FailOpen:
		if f.FailurePolicy {
			w.Config.FailurePolicy = wasmextv3.FailurePolicy_FAIL_OPEN
		} else {
			w.Config.FailOpen = true //nolint:staticcheck // SA1019: what proxies before Istio 1.23 read
		}
	case wasmev1.FailReload:
		w.Config.FailurePolicy = wasmextv3.FailurePolicy_FAIL_RELOAD
	}
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

// ChainKey is what orders a FilterDeployment's filter among the others on a workload.
type ChainKey struct {
	// Phase is spec.filter.phase; empty is UNSPECIFIED.
	Phase wasmev1.Phase
	// Priority is spec.filter.priority (higher runs first), within [-1000, 1000].
	Priority int32
	// Name is the FilterDeployment's name, the tie-break.
	Name string
}

// Bounds of the EnvoyFilter priorities ChainPriority gives out.
const (
	maxFilterPriority = 1000
	maxTies           = 1000
	phaseSpan         = (2*maxFilterPriority + 1) * maxTies
)

// ChainPriority is the EnvoyFilter priority that puts k's filter in its place among those of
// all (the FilterDeployments of k's namespace, k included): phase first, then priority
// (higher first), then name. istiod applies a workload's EnvoyFilters in priority order and
// breaks ties by creation time, so each filter gets a priority of its own. Ties of phase and
// priority are counted only among the FilterDeployments that share both, so a new one with a
// priority of its own moves no other. Filters at the head of the chain (AUTHN, AUTHZ) are
// inserted first-in-chain, so they are applied in reverse. All values are positive: istiod
// applies users' EnvoyFilters of the default priority 0 before wasme's.
func ChainPriority(k ChainKey, all []ChainKey) int32 {
	phase := func(p wasmev1.Phase) int {
		switch p {
		case wasmev1.PhaseAuthN, wasmev1.PhaseStats:
			return 0
		}
		return 1 // AUTHZ, UNSPECIFIED
	}
	pr := int(min(max(k.Priority, -maxFilterPriority), maxFilterPriority))
	tie := 0
	for _, o := range all {
		if headOfChain(o.Phase) == headOfChain(k.Phase) && phase(o.Phase) == phase(k.Phase) &&
			int(min(max(o.Priority, -maxFilterPriority), maxFilterPriority)) == pr && o.Name < k.Name {
			tie++
		}
	}
	tie = min(tie, maxTies-1)
	// The position in the chain, counted from the head of the phase group.
	pos := phase(k.Phase)*phaseSpan + (maxFilterPriority-pr)*maxTies + tie
	if headOfChain(k.Phase) {
		pos = 2*phaseSpan - 1 - pos
	}
	return int32(1 + pos)
}
