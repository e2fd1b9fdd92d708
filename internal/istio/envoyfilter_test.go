package istio

import (
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
