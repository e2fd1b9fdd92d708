package istio

import (
	"cmp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	wasmev1 "wasme.io/wasme/api/v1"
)

var sha = strings.Repeat("a1", 32)

func seedFilter(shape Shape) Filter {
	return Filter{
		Name:           "details-v1-bookinfo-custom-filter.bookinfo",
		Namespace:      "bookinfo",
		WorkloadLabels: map[string]string{"app": "details", "version": "v1"},
		ID:             "bookinfo-custom-filter.bookinfo",
		RootID:         "add_header",
		ModuleSHA256:   sha,
		Config:         wasmev1.FilterConfig{TypeURL: wasmev1.StringValueType},
		Context:        "SIDECAR_INBOUND",
		Shape:          shape,
	}
}

// The seed article's EnvoyFilter spec, for Istio 1.5.
const seedSpec = `configPatches:
- applyTo: HTTP_FILTER
  match:
    context: SIDECAR_INBOUND
    listener:
      filterChain:
        filter:
          name: envoy.http_connection_manager
          subFilter:
            name: envoy.router
  patch:
    operation: INSERT_BEFORE
    value:
      config:
        config:
          name: bookinfo-custom-filter.bookinfo
          rootId: add_header
          vmConfig:
            code:
              local:
                filename: /var/local/lib/wasme-cache/SHA
            runtime: envoy.wasm.runtime.v8
            vmId: bookinfo-custom-filter.bookinfo
      name: envoy.filters.http.wasm
workloadSelector:
  labels:
    app: details
    version: v1
`

func specYAML(t *testing.T, f Filter) string {
	t.Helper()
	ef, err := BuildEnvoyFilter(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := yaml.Marshal(&ef.Spec)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSeedEnvoyFilterForIstio15(t *testing.T) {
	got := specYAML(t, seedFilter(ShapeFor(Version{1, 5})))
	if want := strings.ReplaceAll(seedSpec, "SHA", sha); got != want {
		t.Errorf("spec differs from the seed's:\n--- got\n%s--- want\n%s", got, want)
	}
}

func TestShapes(t *testing.T) {
	withConfig := func(s Shape, c wasmev1.FilterConfig) Filter {
		f := seedFilter(s)
		f.Config = c
		f.Context = "SIDECAR_OUTBOUND"
		return f
	}
	str := wasmev1.FilterConfig{TypeURL: wasmev1.StringValueType, Value: []byte("world")}
	cases := []struct {
		name    string
		f       Filter
		want    []string
		notWant []string
	}{
		{"legacy with config", withConfig(LegacyShape, str),
			[]string{"configuration: world", "context: SIDECAR_OUTBOUND", "name: envoy.http_connection_manager"}, []string{"typed"}},
		{"TypedStruct (1.7-1.9)", withConfig(TypedStructShape, str), []string{
			"'@type': type.googleapis.com/udpa.type.v1.TypedStruct",
			"typeUrl: type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
			"'@type': type.googleapis.com/google.protobuf.StringValue", "value: world",
			"name: envoy.router",
		}, []string{"typed_config"}},
		{"typed (current)", withConfig(TypedShape, str), []string{
			"typed_config:", "'@type': type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
			"name: envoy.filters.network.http_connection_manager", "name: envoy.filters.http.router",
			"filename: /var/local/lib/wasme-cache/" + sha,
		}, []string{"TypedStruct", "envoy.router"}},
		{"other cache directory", func() Filter { f := withConfig(TypedShape, str); f.CacheDir = "/srv/wasme"; return f }(),
			[]string{"filename: /srv/wasme/" + sha}, []string{wasmev1.CacheDir}},
		{"other cache directory, legacy", func() Filter { f := withConfig(LegacyShape, str); f.CacheDir = "/srv/wasme"; return f }(),
			[]string{"filename: /srv/wasme/" + sha}, []string{wasmev1.CacheDir}},
		{"Struct config", withConfig(TypedShape, wasmev1.FilterConfig{TypeURL: wasmev1.StructType, Value: []byte(`{"name":"x-a"}`)}),
			[]string{"'@type': type.googleapis.com/google.protobuf.Struct", "name: x-a"}, nil},
		{"Bytes config", withConfig(TypedShape, wasmev1.FilterConfig{TypeURL: wasmev1.BytesValueType, Value: []byte("hi")}),
			[]string{"'@type': type.googleapis.com/google.protobuf.BytesValue", "value: aGk="}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := specYAML(t, tc.f)
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("missing %q in\n%s", w, got)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(got, w) {
					t.Errorf("unexpected %q in\n%s", w, got)
				}
			}
		})
	}
}

func TestBuildEnvoyFilterRefusesWhatEnvoyWould(t *testing.T) {
	cases := map[string]func(*Filter){
		"unknown context":   func(f *Filter) { f.Context = "SIDEWAYS" },
		"empty id":          func(f *Filter) { f.ID = "" },
		"bad module digest": func(f *Filter) { f.ModuleSHA256 = "sha256:" + sha },
		"legacy binary config": func(f *Filter) {
			f.Shape = LegacyShape
			f.Config = wasmev1.FilterConfig{TypeURL: wasmev1.BytesValueType, Value: []byte{0xff, 0xfe}}
		},
		"bad struct": func(f *Filter) { f.Config = wasmev1.FilterConfig{TypeURL: wasmev1.StructType, Value: []byte("[1]")} },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			f := seedFilter(TypedShape)
			mutate(&f)
			if _, err := BuildEnvoyFilter(f); err == nil {
				t.Fatal("built, want error")
			}
		})
	}
}

func TestShapeFor(t *testing.T) {
	for v, want := range map[Version]Shape{
		{1, 5}: LegacyShape, {1, 6}: LegacyShape, {1, 7}: TypedStructShape, {1, 9}: TypedStructShape,
		{1, 10}: TypedShape, {1, 24}: TypedShape, {2, 0}: TypedShape,
	} {
		if got := ShapeFor(v); got != want {
			t.Errorf("ShapeFor(%s) = %s, want %s", v, got, want)
		}
	}
}

// The ECDS form of the seed's filter on a current Istio: the Wasm filter as an extension config
// fetching from the node cache, and a listener patch that only names it.
const ecdsSpec = `configPatches:
- applyTo: EXTENSION_CONFIG
  patch:
    operation: ADD
    value:
      name: wasme.bookinfo-custom-filter.bookinfo
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
        config:
          configuration:
            '@type': type.googleapis.com/google.protobuf.StringValue
            value: world
          name: bookinfo-custom-filter.bookinfo
          rootId: add_header
          vmConfig:
            code:
              remote:
                httpUri:
                  cluster: wasme-cache.wasme.svc:9979
                  timeout: 30s
                  uri: http://wasme-cache.wasme.svc:9979/sha256/SHA
                sha256: SHA
            runtime: envoy.wasm.runtime.v8
            vmId: bookinfo-custom-filter.bookinfo
- applyTo: HTTP_FILTER
  match:
    context: SIDECAR_INBOUND
    listener:
      filterChain:
        filter:
          name: envoy.filters.network.http_connection_manager
          subFilter:
            name: envoy.filters.http.router
  patch:
    operation: INSERT_BEFORE
    value:
      config_discovery:
        config_source:
          ads: {}
          initial_fetch_timeout: 0s
        type_urls:
        - type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
        - type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
      name: wasme.bookinfo-custom-filter.bookinfo
workloadSelector:
  labels:
    app: details
    version: v1
`

func ecdsFilter() Filter {
	f := seedFilter(TypedShape)
	f.Config = wasmev1.FilterConfig{TypeURL: wasmev1.StringValueType, Value: []byte("world")}
	f.ModuleURL = ModuleURL("http://wasme-cache.wasme.svc:9979/", sha)
	return f
}

func TestECDSEnvoyFilter(t *testing.T) {
	ef, err := BuildECDSEnvoyFilter(ecdsFilter())
	if err != nil {
		t.Fatal(err)
	}
	b, err := yaml.Marshal(&ef.Spec)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), strings.ReplaceAll(ecdsSpec, "SHA", sha); got != want {
		t.Errorf("ECDS spec:\n--- got\n%s--- want\n%s", got, want)
	}
}

func TestBuildECDSEnvoyFilterRefuses(t *testing.T) {
	for name, tc := range map[string]struct {
		mutate func(*Filter)
		want   string
	}{
		"no URL":          {func(f *Filter) { f.ModuleURL = "" }, "needs the module's URL"},
		"legacy Istio":    {func(f *Filter) { f.Shape = LegacyShape }, "needs Istio 1.10 or later"},
		"TypedStruct":     {func(f *Filter) { f.Shape = TypedStructShape }, "needs Istio 1.10 or later"},
		"bad digest":      {func(f *Filter) { f.ModuleSHA256 = "abc" }, "not a sha256 hex string"},
		"unknown context": {func(f *Filter) { f.Context = "SIDEWAYS" }, "unknown patch context"},
	} {
		t.Run(name, func(t *testing.T) {
			f := ecdsFilter()
			tc.mutate(&f)
			if _, err := BuildECDSEnvoyFilter(f); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestPlacementAndControls(t *testing.T) {
	prio := int32(4001)
	cases := map[string]struct {
		mutate func(*Filter)
		want   []string // substrings of the spec YAML
		not    []string
	}{
		"FailClose is Envoy's default and left out": {
			func(f *Filter) { f.FailStrategy = wasmev1.FailClose; f.FailurePolicy = true },
			nil, []string{"failurePolicy", "failOpen"},
		},
		"FailOpen as failure_policy": {
			func(f *Filter) { f.FailStrategy = wasmev1.FailOpen; f.FailurePolicy = true },
			[]string{"failurePolicy: FAIL_OPEN"}, []string{"failOpen"},
		},
		"FailOpen before failure_policy": {
			func(f *Filter) { f.FailStrategy = wasmev1.FailOpen },
			[]string{"failOpen: true"}, []string{"failurePolicy"},
		},
		"FailReload": {
			func(f *Filter) { f.FailStrategy = wasmev1.FailReload; f.FailurePolicy = true },
			[]string{"failurePolicy: FAIL_RELOAD"}, nil,
		},
		"env inline and from the host": {
			func(f *Filter) {
				f.Env = []wasmev1.EnvVar{{Name: "A", Value: "1"}, {Name: "POD_NAME", ValueFrom: wasmev1.EnvHost}, {Name: "B", ValueFrom: wasmev1.EnvInline, Value: "x=y"}}
			},
			[]string{"environmentVariables:", "hostEnvKeys:\n              - POD_NAME", "keyValues:\n                A: \"1\"\n                B: x=y"}, nil,
		},
		"AUTHN goes first in the chain": {
			func(f *Filter) { f.Phase = wasmev1.PhaseAuthN },
			[]string{"operation: INSERT_FIRST", "name: envoy.filters.network.http_connection_manager\n  patch"}, []string{"subFilter", "INSERT_BEFORE"},
		},
		"STATS goes before the router": {
			func(f *Filter) { f.Phase = wasmev1.PhaseStats },
			[]string{"operation: INSERT_BEFORE", "subFilter:\n            name: envoy.filters.http.router"}, []string{"INSERT_FIRST"},
		},
		"priority": {
			func(f *Filter) { f.Priority = &prio },
			[]string{"priority: 4001"}, nil,
		},
		"one patch per placement, with its port": {
			func(f *Filter) {
				f.Placements = []Placement{{Context: "SIDECAR_INBOUND", Port: 9080}, {Context: "SIDECAR_OUTBOUND"}, {Context: "SIDECAR_OUTBOUND", Port: 80}}
			},
			[]string{"context: SIDECAR_INBOUND\n    listener:\n      filterChain:", "portNumber: 9080", "portNumber: 80", "context: SIDECAR_OUTBOUND"}, nil,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			f := seedFilter(TypedShape)
			tc.mutate(&f)
			got := specYAML(t, f)
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("spec lacks %q:\n%s", w, got)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(got, n) {
					t.Errorf("spec has %q:\n%s", n, got)
				}
			}
		})
	}
	f := seedFilter(TypedShape)
	f.Placements = []Placement{{Context: "SIDECAR_INBOUND", Port: 9080}, {Context: "SIDECAR_OUTBOUND"}}
	ef, err := BuildEnvoyFilter(f)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(ef.Spec.ConfigPatches); n != 2 {
		t.Errorf("%d patches, want one per placement (2)", n)
	}
	f.ModuleURL = ModuleURL("http://wasme-cache.wasme.svc:9979", sha)
	ecds, err := BuildECDSEnvoyFilter(f)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(ecds.Spec.ConfigPatches); n != 3 {
		t.Fatalf("%d ECDS patches, want one extension config and one filter reference per placement (3)", n)
	}
	for _, cp := range ecds.Spec.ConfigPatches[1:] {
		if got := cp.GetPatch().GetValue().GetFields()["name"].GetStringValue(); got != ExtensionConfigName(f.ID) {
			t.Errorf("filter reference names %q, want the extension config", got)
		}
	}
}

func TestPlacementRefusals(t *testing.T) {
	prio := int32(1)
	for name, tc := range map[string]struct {
		mutate func(*Filter)
		want   string
	}{
		"FailReload without failure_policy": {func(f *Filter) { f.FailStrategy = wasmev1.FailReload }, "needs Istio 1.23 or later"},
		"unknown fail strategy":             {func(f *Filter) { f.FailStrategy = "FailSideways" }, "unknown failStrategy"},
		"AUTHN on Istio 1.5":                {func(f *Filter) { f.Shape = LegacyShape; f.Phase = wasmev1.PhaseAuthN }, "needs Istio 1.10"},
		"priority on Istio 1.7":             {func(f *Filter) { f.Shape = TypedStructShape; f.Priority = &prio }, "need Istio 1.10"},
		"unknown placement context":         {func(f *Filter) { f.Placements = []Placement{{Context: "SIDEWAYS"}} }, "unknown patch context"},
	} {
		t.Run(name, func(t *testing.T) {
			f := seedFilter(TypedShape)
			tc.mutate(&f)
			if _, err := BuildEnvoyFilter(f); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

// chainOrder applies ChainPriority as istiod would: EnvoyFilters by ascending priority, each
// inserting its filter first in the chain (AUTHN, AUTHZ) or before the router.
func chainOrder(keys []ChainKey) []string {
	type ef struct {
		prio int32
		key  ChainKey
	}
	var efs []ef
	for _, k := range keys {
		efs = append(efs, ef{ChainPriority(k, keys), k})
	}
	slices.SortFunc(efs, func(a, b ef) int { return cmp.Compare(a.prio, b.prio) })
	var head, tail []string
	for _, e := range efs {
		if headOfChain(e.key.Phase) {
			head = append([]string{e.key.Name}, head...)
		} else {
			tail = append(tail, e.key.Name)
		}
	}
	return append(append(head, "<istio filters>"), tail...)
}

func TestChainPriorityOrdersByPhasePriorityName(t *testing.T) {
	keys := []ChainKey{
		{Phase: "", Priority: 0, Name: "u-b"},
		{Phase: wasmev1.PhaseUnspecified, Priority: 0, Name: "u-a"},
		{Phase: wasmev1.PhaseStats, Priority: -5, Name: "stats"},
		{Phase: wasmev1.PhaseUnspecified, Priority: 10, Name: "u-high"},
		{Phase: wasmev1.PhaseAuthZ, Priority: 0, Name: "authz"},
		{Phase: wasmev1.PhaseAuthN, Priority: 0, Name: "authn-b"},
		{Phase: wasmev1.PhaseAuthN, Priority: 0, Name: "authn-a"},
		{Phase: wasmev1.PhaseAuthN, Priority: 1000, Name: "authn-first"},
		{Phase: wasmev1.PhaseAuthN, Priority: -1000, Name: "authn-last"},
	}
	want := []string{"authn-first", "authn-a", "authn-b", "authn-last", "authz", "<istio filters>", "stats", "u-high", "u-a", "u-b"}
	// Whatever order they come in (creation order), the chain is the same.
	for i := range keys {
		rotated := append(slices.Clone(keys[i:]), keys[:i]...)
		if got := chainOrder(rotated); !slices.Equal(got, want) {
			t.Fatalf("rotation %d: chain %v, want %v", i, got, want)
		}
	}
	seen := map[int32]string{}
	for _, k := range keys {
		p := ChainPriority(k, keys)
		if p <= 0 {
			t.Errorf("%s: priority %d, want positive (after users' default-priority EnvoyFilters)", k.Name, p)
		}
		if o, dup := seen[p]; dup && headOfChain(k.Phase) == headOfChain(ChainKey{Name: o}.Phase) {
			t.Errorf("%s and %s share priority %d", k.Name, o, p)
		}
		seen[p] = k.Name
	}
	// A newcomer with a priority of its own moves no other filter.
	before := ChainPriority(keys[0], keys)
	if after := ChainPriority(keys[0], append(slices.Clone(keys), ChainKey{Priority: 7, Name: "a-new"})); after != before {
		t.Errorf("a new filter of another priority moved u-b from %d to %d", before, after)
	}
}
