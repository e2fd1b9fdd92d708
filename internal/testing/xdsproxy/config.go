package xdsproxy

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	udpatypev1 "github.com/cncf/xds/go/udpa/type/v1"
	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbaccfgv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	wasmextv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Names and type URLs of the Envoy config this proxy reads.
const (
	HCMFilterName  = "envoy.filters.network.http_connection_manager"
	WasmFilterName = "envoy.filters.http.wasm"
	hcmTypeURL     = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
	wasmTypeURL    = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
	// Envoy accepts a filter config wrapped in either TypedStruct (Istio 1.7-1.9 wrote them);
	// the proxy must read them as Envoy would or refuse them, never skip them.
	udpaTypedStructURL = "type.googleapis.com/udpa.type.v1.TypedStruct"
	xdsTypedStructURL  = "type.googleapis.com/xds.type.v3.TypedStruct"
	stringValueURL     = "type.googleapis.com/google.protobuf.StringValue"
	bytesValueURL      = "type.googleapis.com/google.protobuf.BytesValue"
	structURL          = "type.googleapis.com/google.protobuf.Struct"
	rbacTypeURL        = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
)

// WasmFilter is one envoy.filters.http.wasm entry of the inbound HTTP filter chain, as the
// proxy will run it.
type WasmFilter struct {
	// Name is the plugin name (config.name).
	Name string
	// RootID and VMID are config.root_id and config.vm_config.vm_id.
	RootID, VMID string
	// Runtime is config.vm_config.runtime, e.g. envoy.wasm.runtime.v8.
	Runtime string
	// Filename is code.local.filename as istiod delivered it.
	Filename string
	// Path is where the module was read from on this machine (Filename mapped to a node cache).
	Path string
	// Configuration and VMConfiguration are the bytes handed to proxy_on_configure and
	// proxy_on_vm_start, decoded as Envoy does (StringValue and BytesValue as their value,
	// Struct as JSON).
	Configuration, VMConfiguration []byte
	// FailOpen is config.fail_open, or config.failure_policy FAIL_OPEN.
	FailOpen bool
	// Env is the VM's environment from vm_config.environment_variables, "NAME=value" sorted
	// by name: key_values, and host_env_keys present in this process's environment.
	Env []string
	// Module is the .wasm bytes.
	Module []byte
}

// Chain is what the proxy took from one listener update: the inbound HTTP filter chain for
// its port.
type Chain struct {
	// Listener and FilterChain name where the HTTP connection manager was found.
	Listener, FilterChain string
	// HTTPFilters are the names of every HTTP filter of the chain, in order (Envoy's own
	// filters included), so tests can check where the Wasm filters sit.
	HTTPFilters []string
	// Wasm are the Wasm filters, in chain order.
	Wasm []WasmFilter
}

// ModuleResolver maps code.local.filename, a path on the node as Envoy sees it, to a file on
// this machine.
type ModuleResolver func(filename string) (string, error)

// PrefixResolver maps files under prefix (e.g. /var/local/lib/wasme-cache) to dir, and refuses
// any other path: a sidecar only sees what is mounted into it.
func PrefixResolver(prefix, dir string) ModuleResolver {
	prefix = strings.TrimSuffix(prefix, "/") + "/"
	return func(filename string) (string, error) {
		rest, ok := strings.CutPrefix(filename, prefix)
		if !ok || rest == "" || strings.Contains(rest, "/") || rest == "." || rest == ".." {
			return "", fmt.Errorf("module file %q is not a file directly under %s, the only directory mounted into this sidecar", filename, prefix)
		}
		return filepath.Join(dir, rest), nil
	}
}

// findChain picks the inbound HTTP filter chain serving port from the listeners: the chain of
// an INBOUND listener whose filter_chain_match names the port, plaintext, and HTTP/1.1 if the
// chain says. Errors say what was missing, so a test failure tells whether istiod sent no
// inbound listener, no chain for the port, or no HTTP connection manager.
func findChain(listeners []*listenerv3.Listener, port uint32) (*listenerv3.Listener, *listenerv3.FilterChain, *hcmv3.HttpConnectionManager, error) {
	var seen []string
	for _, l := range listeners {
		if l.GetTrafficDirection().String() != "INBOUND" && l.GetName() != "virtualInbound" {
			continue
		}
		seen = append(seen, l.GetName())
		var best *listenerv3.FilterChain
		bestScore := -1
		var bestHCM *hcmv3.HttpConnectionManager
		for _, fc := range l.GetFilterChains() {
			m := fc.GetFilterChainMatch()
			if m.GetDestinationPort().GetValue() != port {
				continue
			}
			hcm, err := hcmOf(fc)
			if err != nil {
				return nil, nil, nil, fmt.Errorf("listener %s filter chain %s: %w", l.GetName(), fc.GetName(), err)
			}
			if hcm == nil {
				continue
			}
			// Prefer the chain plain HTTP/1.1 traffic (what the test client sends) matches.
			score := 0
			if tp := m.GetTransportProtocol(); tp == "" || tp == "raw_buffer" {
				score += 2
			}
			if ap := m.GetApplicationProtocols(); len(ap) == 0 || slices.Contains(ap, "http/1.1") {
				score++
			}
			if score > bestScore {
				best, bestScore, bestHCM = fc, score, hcm
			}
		}
		if best != nil {
			return l, best, bestHCM, nil
		}
	}
	if len(seen) == 0 {
		return nil, nil, nil, fmt.Errorf("no inbound listener among %d listeners", len(listeners))
	}
	return nil, nil, nil, fmt.Errorf("no HTTP filter chain for port %d in inbound listeners %v", port, seen)
}

func hcmOf(fc *listenerv3.FilterChain) (*hcmv3.HttpConnectionManager, error) {
	for _, f := range fc.GetFilters() {
		if f.GetName() != HCMFilterName && f.GetTypedConfig().GetTypeUrl() != hcmTypeURL {
			continue
		}
		if f.GetTypedConfig().GetTypeUrl() != hcmTypeURL {
			return nil, fmt.Errorf("HTTP connection manager with config type %q, which this proxy cannot read", f.GetTypedConfig().GetTypeUrl())
		}
		hcm := &hcmv3.HttpConnectionManager{}
		if err := f.GetTypedConfig().UnmarshalTo(hcm); err != nil {
			return nil, fmt.Errorf("HTTP connection manager: %w", err)
		}
		return hcm, nil
	}
	return nil, nil
}

// buildChain reads the chain for port and loads every Wasm filter in it. Any Wasm filter it
// cannot run exactly as configured is an error: the update is refused (NACKed), as Envoy
// refuses a listener with a bad filter, rather than served without the filter.
func buildChain(listeners []*listenerv3.Listener, port uint32, resolve ModuleResolver) (*Chain, error) {
	l, fc, hcm, err := findChain(listeners, port)
	if err != nil {
		return nil, err
	}
	steps, err := HTTPFilters(hcm, resolve, nil)
	if err != nil {
		return nil, err
	}
	c := &Chain{Listener: l.GetName(), FilterChain: fc.GetName()}
	for _, st := range steps {
		c.HTTPFilters = append(c.HTTPFilters, st.Name)
		if st.Wasm != nil {
			c.Wasm = append(c.Wasm, *st.Wasm)
		}
	}
	return c, nil
}

// ErrNotReceived marks an HTTP filter whose extension config (ECDS) has not arrived yet; Envoy
// keeps such a listener warming, and so does the stand-in.
var ErrNotReceived = errors.New("extension config not received yet")

// ExtensionConfigs returns the typed config of the ECDS resource name (as the agent forwarded
// it), or false when none has arrived.
type ExtensionConfigs func(name string) (*anypb.Any, bool)

// Step is one HTTP filter of a chain as a proxy runs it.
type Step struct {
	// Name is the filter's name in the chain (for ECDS, the extension config's name).
	Name string
	// Wasm is set for a Wasm filter.
	Wasm *WasmFilter
	// Deny is set for an RBAC filter that denies every request (istio-agent puts one in place
	// of a Wasm filter whose module it could not fetch, fail strategy FailClose).
	Deny bool
	// Discovered: the filter came from extension config discovery.
	Discovered bool
}

// HTTPFilters reads the HTTP filters of an HTTP connection manager in order and loads every Wasm
// filter, inline or, when ecds is not nil, from extension config discovery. Envoy's own filters
// (istio.alpn, fault, cors, router...) are listed by name and not run; a Wasm filter this proxy
// cannot run as configured is an error, never skipped.
func HTTPFilters(hcm *hcmv3.HttpConnectionManager, resolve ModuleResolver, ecds ExtensionConfigs) ([]Step, error) {
	var out []Step
	for i, hf := range hcm.GetHttpFilters() {
		isWasm := hf.GetName() == WasmFilterName
		var tc *anypb.Any
		discovered := false
		switch {
		case hf.GetConfigDiscovery() != nil:
			cd := hf.GetConfigDiscovery()
			if ecds == nil {
				if isWasm || slices.Contains(cd.GetTypeUrls(), wasmTypeURL) {
					return nil, fmt.Errorf("HTTP filter %d (%s) comes from extension config discovery (ECDS), which this proxy does not implement", i, hf.GetName())
				}
				out = append(out, Step{Name: hf.GetName()})
				continue
			}
			a, ok := ecds(hf.GetName())
			if !ok {
				return nil, fmt.Errorf("HTTP filter %d (%s): %w", i, hf.GetName(), ErrNotReceived)
			}
			if !slices.Contains(cd.GetTypeUrls(), a.GetTypeUrl()) {
				return nil, fmt.Errorf("HTTP filter %d (%s): extension config of type %s, not one of the filter's type_urls %v", i, hf.GetName(), a.GetTypeUrl(), cd.GetTypeUrls())
			}
			tc, discovered = a, true
		case hf.GetTypedConfig() != nil:
			tc = hf.GetTypedConfig()
		default:
			if isWasm {
				return nil, fmt.Errorf("HTTP filter %d (%s) has no typed_config", i, hf.GetName())
			}
			out = append(out, Step{Name: hf.GetName()})
			continue
		}
		st := Step{Name: hf.GetName(), Discovered: discovered}
		if tc.GetTypeUrl() == rbacTypeURL && discovered {
			deny, err := rbacDenyAll(tc)
			if err != nil {
				return nil, fmt.Errorf("HTTP filter %d (%s): %w", i, hf.GetName(), err)
			}
			st.Deny = deny
			out = append(out, st)
			continue
		}
		w, isWasmType, err := wasmConfig(tc)
		if err != nil {
			return nil, fmt.Errorf("HTTP filter %d (%s): %w", i, hf.GetName(), err)
		}
		if !isWasmType {
			if isWasm {
				return nil, fmt.Errorf("HTTP filter %d is named %s but its config is a %s", i, WasmFilterName, tc.GetTypeUrl())
			}
			if discovered {
				return nil, fmt.Errorf("HTTP filter %d (%s) has an extension config of type %s, which this proxy cannot run", i, hf.GetName(), tc.GetTypeUrl())
			}
			out = append(out, st)
			continue
		}
		wf, err := loadWasm(w, resolve)
		if err != nil {
			return nil, fmt.Errorf("HTTP filter %d (%s): %w", i, hf.GetName(), err)
		}
		st.Wasm = wf
		out = append(out, st)
	}
	return out, nil
}

// rbacDenyAll reads the two RBAC filters istio-agent substitutes for a Wasm filter it could
// not fetch: no rules (allow all, fail open) and rules without policies (deny all, fail
// close). Any other RBAC config is refused: this proxy does not evaluate policies.
func rbacDenyAll(a *anypb.Any) (bool, error) {
	r := &rbacv3.RBAC{}
	if err := a.UnmarshalTo(r); err != nil {
		return false, err
	}
	if r.GetRules() == nil {
		return false, nil
	}
	if len(r.GetRules().GetPolicies()) > 0 {
		return false, fmt.Errorf("RBAC with %d policies: this proxy only runs the allow-all and deny-all filters istio-agent substitutes for a module it could not fetch", len(r.GetRules().GetPolicies()))
	}
	// No policy matches: ALLOW denies every request, DENY allows every request.
	return r.GetRules().GetAction() == rbaccfgv3.RBAC_ALLOW, nil
}

// wasmConfig decodes a Wasm filter config, plain or inside a TypedStruct; isWasm is false for
// any other filter type.
func wasmConfig(a *anypb.Any) (w *wasmv3.Wasm, isWasm bool, err error) {
	switch a.GetTypeUrl() {
	case wasmTypeURL:
		w = &wasmv3.Wasm{}
		if err := a.UnmarshalTo(w); err != nil {
			return nil, true, err
		}
		return w, true, nil
	case udpaTypedStructURL, xdsTypedStructURL:
		var typeURL string
		var value *structpb.Struct
		if a.GetTypeUrl() == udpaTypedStructURL {
			ts := &udpatypev1.TypedStruct{}
			if err := a.UnmarshalTo(ts); err != nil {
				return nil, true, err
			}
			typeURL, value = ts.GetTypeUrl(), ts.GetValue()
		} else {
			ts := &xdstypev3.TypedStruct{}
			if err := a.UnmarshalTo(ts); err != nil {
				return nil, true, err
			}
			typeURL, value = ts.GetTypeUrl(), ts.GetValue()
		}
		if typeURL != wasmTypeURL {
			return nil, false, nil
		}
		js, err := protojson.Marshal(value)
		if err != nil {
			return nil, true, err
		}
		w = &wasmv3.Wasm{}
		if err := protojson.Unmarshal(js, w); err != nil {
			return nil, true, fmt.Errorf("TypedStruct value is not a Wasm filter config: %w", err)
		}
		return w, true, nil
	}
	return nil, false, nil
}

func loadWasm(w *wasmv3.Wasm, resolve ModuleResolver) (*WasmFilter, error) {
	if err := w.ValidateAll(); err != nil {
		return nil, fmt.Errorf("invalid Wasm filter config: %w", err)
	}
	pc := w.GetConfig()
	if pc == nil {
		return nil, fmt.Errorf("the Wasm filter has no plugin config")
	}
	vm := pc.GetVmConfig()
	if vm == nil {
		return nil, fmt.Errorf("plugin %q has no vm_config (a shared VM by reference is not supported)", pc.GetName())
	}
	switch vm.GetRuntime() {
	case "envoy.wasm.runtime.v8", "envoy.wasm.runtime.wamr", "envoy.wasm.runtime.wasmtime", "envoy.wasm.runtime.wavm":
	default:
		// envoy.wasm.runtime.null runs a plugin compiled into Envoy: no bytes to run here.
		return nil, fmt.Errorf("plugin %q: runtime %q is not a WebAssembly runtime this proxy stands in for", pc.GetName(), vm.GetRuntime())
	}
	local := vm.GetCode().GetLocal()
	if local == nil {
		return nil, fmt.Errorf("plugin %q: only code.local is supported, got %T", pc.GetName(), vm.GetCode().GetSpecifier())
	}
	filename := local.GetFilename()
	if filename == "" {
		return nil, fmt.Errorf("plugin %q: code.local is not a filename (inline code is not what wasme delivers)", pc.GetName())
	}
	path, err := resolve(filename)
	if err != nil {
		return nil, fmt.Errorf("plugin %q: %w", pc.GetName(), err)
	}
	mod, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("plugin %q: reading the module: %w", pc.GetName(), err)
	}
	// The node cache names modules by their sha256; a mismatch means a corrupt cache.
	if base := filepath.Base(filename); len(base) == 64 {
		sum := sha256.Sum256(mod)
		if hex.EncodeToString(sum[:]) != base {
			return nil, fmt.Errorf("plugin %q: %s does not hash to its name", pc.GetName(), path)
		}
	}
	cfg, err := configBytes(pc.GetConfiguration())
	if err != nil {
		return nil, fmt.Errorf("plugin %q configuration: %w", pc.GetName(), err)
	}
	vmCfg, err := configBytes(vm.GetConfiguration())
	if err != nil {
		return nil, fmt.Errorf("plugin %q vm configuration: %w", pc.GetName(), err)
	}
	if pc.GetCapabilityRestrictionConfig() != nil {
		return nil, fmt.Errorf("plugin %q: capability_restriction_config is not supported", pc.GetName())
	}
	return &WasmFilter{
		Name: pc.GetName(), RootID: pc.GetRootId(), VMID: vm.GetVmId(), Runtime: vm.GetRuntime(),
		Filename: filename, Path: path, Configuration: cfg, VMConfiguration: vmCfg,
		// fail_open is deprecated for failure_policy, but Envoy still honours it and a
		// control plane may send either.
		FailOpen: pc.GetFailOpen() || pc.GetFailurePolicy() == wasmextv3.FailurePolicy_FAIL_OPEN, //nolint:staticcheck // SA1019, see above
		Env:      vmEnv(vm.GetEnvironmentVariables()),
		Module:   mod,
	}, nil
}

// vmEnv builds a VM's environment as Envoy does: the inline key_values, and each of
// host_env_keys the proxy's own environment has (Envoy skips those it lacks).
func vmEnv(ev *wasmextv3.EnvironmentVariables) []string {
	env := map[string]string{}
	for _, k := range ev.GetHostEnvKeys() {
		if v, ok := os.LookupEnv(k); ok {
			env[k] = v
		}
	}
	maps.Copy(env, ev.GetKeyValues())
	var out []string
	for _, k := range slices.Sorted(maps.Keys(env)) {
		out = append(out, k+"="+env[k])
	}
	return out
}

// configBytes is what Envoy hands a plugin for an Any configuration: the value of a
// StringValue or BytesValue, the JSON of a Struct. Anything else Envoy would pass as JSON of a
// message type it knows; this proxy refuses instead of guessing.
func configBytes(a *anypb.Any) ([]byte, error) {
	if a == nil {
		return nil, nil
	}
	var m proto.Message
	switch a.GetTypeUrl() {
	case stringValueURL:
		s := &wrapperspb.StringValue{}
		if err := a.UnmarshalTo(s); err != nil {
			return nil, err
		}
		return []byte(s.GetValue()), nil
	case bytesValueURL:
		b := &wrapperspb.BytesValue{}
		if err := a.UnmarshalTo(b); err != nil {
			return nil, err
		}
		return b.GetValue(), nil
	case structURL:
		m = &structpb.Struct{}
	default:
		return nil, fmt.Errorf("type %q is not supported (StringValue, BytesValue or Struct)", a.GetTypeUrl())
	}
	if err := a.UnmarshalTo(m); err != nil {
		return nil, err
	}
	return protojson.Marshal(m)
}
