package v1

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// Type URLs accepted in the Any form of spec.filter.config.
const (
	StringValueType = "type.googleapis.com/google.protobuf.StringValue"
	BytesValueType  = "type.googleapis.com/google.protobuf.BytesValue"
	StructType      = "type.googleapis.com/google.protobuf.Struct"
)

// ModuleDigestHex checks a module digest, "sha256:" and 64 lower-case hex characters (the
// form of status.moduleDigest and of NodeCache modules), and returns the hex part: the module's
// file name in the node cache.
func ModuleDigestHex(digest string) (string, error) {
	h, ok := strings.CutPrefix(digest, "sha256:")
	if !ok || !IsSHA256Hex(h) {
		return "", fmt.Errorf("malformed module digest %q: want sha256:<64 lower-case hex characters>", digest)
	}
	return h, nil
}

// IsSHA256Hex tells whether s is a sha256 in 64 lower-case hex characters.
func IsSHA256Hex(s string) bool {
	if len(s) != sha256.Size*2 {
		return false
	}
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// FilterID is spec.filter.id, or "<name>.<namespace>" when unset.
func (fd *FilterDeployment) FilterID() string {
	if fd.Spec.Filter.ID != "" {
		return fd.Spec.Filter.ID
	}
	return fd.Name + "." + fd.Namespace
}

// WorkloadKind is the canonical spelling of spec.deployment.istio.kind.
func (s *IstioDeploymentSpec) WorkloadKind() (string, error) {
	switch strings.ToLower(s.Kind) {
	case "", "deployment":
		return "Deployment", nil
	case "daemonset":
		return "DaemonSet", nil
	case "statefulset":
		return "StatefulSet", nil
	}
	return "", fmt.Errorf("unknown workload kind %q, must be one of Deployment, DaemonSet, StatefulSet", s.Kind)
}

// EnvoyPatchContext maps spec.filter.patchContext to the EnvoyFilter match context.
func (f *FilterSpec) EnvoyPatchContext() (string, error) {
	switch strings.ToLower(f.PatchContext) {
	case "", "inbound":
		return "SIDECAR_INBOUND", nil
	case "outbound":
		return "SIDECAR_OUTBOUND", nil
	case "gateway":
		return "GATEWAY", nil
	case "any":
		return "ANY", nil
	}
	return "", fmt.Errorf("unknown patch context %q, must be one of any, inbound, outbound, gateway", f.PatchContext)
}

// FilterConfig is spec.filter.config decoded: the bytes the filter receives in
// proxy_on_configure and the protobuf type they came wrapped in.
type FilterConfig struct {
	// TypeURL is StringValueType, BytesValueType or StructType; a plain string is StringValueType.
	TypeURL string
	// Value is what the filter receives: the string, the decoded bytes, or the Struct as JSON.
	Value []byte
}

// MaxConfigBytes caps spec.filter.config (the admission policy shipped with the CRD refuses a
// longer string; the operator refuses a longer Struct, which CEL cannot measure): the config is
// copied into one EnvoyFilter per workload.
const MaxConfigBytes = 256 << 10

// DecodeConfig decodes spec.filter.config. A nil config decodes to an empty StringValue.
func (f *FilterSpec) DecodeConfig() (FilterConfig, error) {
	c, err := f.decodeConfig()
	if err == nil && len(c.Value) > MaxConfigBytes {
		return FilterConfig{}, fmt.Errorf("spec.filter.config is %d bytes, more than the %d allowed", len(c.Value), MaxConfigBytes)
	}
	return c, err
}

func (f *FilterSpec) decodeConfig() (FilterConfig, error) {
	if f.Config == nil || len(f.Config.Raw) == 0 {
		return FilterConfig{TypeURL: StringValueType}, nil
	}
	var s string
	if err := json.Unmarshal(f.Config.Raw, &s); err == nil {
		return FilterConfig{TypeURL: StringValueType, Value: []byte(s)}, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(f.Config.Raw, &obj); err != nil {
		return FilterConfig{}, fmt.Errorf("spec.filter.config must be a string or an object")
	}
	if _, wrapped := obj["@type"]; !wrapped {
		// A plain object, delivered as JSON text like WasmPlugin's pluginConfig; compacted
		// with sorted keys, so the same object always gives the same bytes.
		var m map[string]any
		if err := json.Unmarshal(f.Config.Raw, &m); err != nil {
			return FilterConfig{}, fmt.Errorf("spec.filter.config: %w", err)
		}
		b, err := json.Marshal(m)
		if err != nil {
			return FilterConfig{}, fmt.Errorf("spec.filter.config: %w", err)
		}
		return FilterConfig{TypeURL: StringValueType, Value: b}, nil
	}
	var typeURL string
	if err := json.Unmarshal(obj["@type"], &typeURL); err != nil || typeURL == "" {
		return FilterConfig{}, fmt.Errorf("spec.filter.config: \"@type\" must be a type URL string")
	}
	for k := range obj {
		if k != "@type" && k != "value" {
			return FilterConfig{}, fmt.Errorf("spec.filter.config: unknown key %q, only \"@type\" and \"value\" are allowed", k)
		}
	}
	raw, hasValue := obj["value"]
	switch typeURL {
	case StringValueType, BytesValueType:
		var v string
		if hasValue {
			if err := json.Unmarshal(raw, &v); err != nil {
				return FilterConfig{}, fmt.Errorf("spec.filter.config: \"value\" of %s must be a string", typeURL)
			}
		}
		if typeURL == StringValueType {
			return FilterConfig{TypeURL: typeURL, Value: []byte(v)}, nil
		}
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return FilterConfig{}, fmt.Errorf("spec.filter.config: \"value\" of %s must be base64: %w", typeURL, err)
		}
		return FilterConfig{TypeURL: typeURL, Value: b}, nil
	case StructType:
		var m map[string]any
		if hasValue {
			if err := json.Unmarshal(raw, &m); err != nil {
				return FilterConfig{}, fmt.Errorf("spec.filter.config: \"value\" of %s must be an object", typeURL)
			}
		}
		if m == nil {
			m = map[string]any{}
		}
		b, err := json.Marshal(m)
		if err != nil {
			return FilterConfig{}, fmt.Errorf("spec.filter.config: %w", err)
		}
		return FilterConfig{TypeURL: typeURL, Value: b}, nil
	}
	return FilterConfig{}, fmt.Errorf("spec.filter.config: unsupported \"@type\" %q, must be one of %s, %s, %s",
		typeURL, StringValueType, BytesValueType, StructType)
}

// NeededDigests is the sorted union of status.moduleDigest (the module being rolled out) and
// status.deployedModuleDigest (the one the proxies load now) over fds: both must stay on
// every node during a rollout. Malformed digests are left out.
func NeededDigests(fds []FilterDeployment) []string {
	var out []string
	for i := range fds {
		for _, d := range []string{fds[i].Status.ModuleDigest, fds[i].Status.DeployedModuleDigest} {
			if _, err := ModuleDigestHex(d); err == nil {
				out = append(out, d)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
