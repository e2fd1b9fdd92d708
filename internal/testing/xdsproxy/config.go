package xdsproxy

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	udpatypev1 "github.com/cncf/xds/go/udpa/type/v1"
	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
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
	// FailOpen is config.fail_open.
	FailOpen bool
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
	c := &Chain{Listener: l.GetName(), FilterChain: fc.GetName()}
	for i, hf := range hcm.GetHttpFilters() {
		c.HTTPFilters = append(c.HTTPFilters, hf.GetName())
		isWasm := hf.GetName() == WasmFilterName
		switch {
		case hf.GetConfigDiscovery() != nil:
			if isWasm || slices.Contains(hf.GetConfigDiscovery().GetTypeUrls(), wasmTypeURL) {
				return nil, fmt.Errorf("HTTP filter %d (%s) comes from extension config discovery (ECDS), which this proxy does not implement", i, hf.GetName())
			}
			continue
		case hf.GetTypedConfig() != nil:
		default:
			if isWasm {
				return nil, fmt.Errorf("HTTP filter %d (%s) has no typed_config", i, hf.GetName())
			}
			continue
		}
		w, isWasmType, err := wasmConfig(hf.GetTypedConfig())
		if err != nil {
			return nil, fmt.Errorf("HTTP filter %d (%s): %w", i, hf.GetName(), err)
		}
		if !isWasmType {
			if isWasm {
				return nil, fmt.Errorf("HTTP filter %d is named %s but its config is a %s", i, WasmFilterName, hf.GetTypedConfig().GetTypeUrl())
			}
			// Envoy's own filters (istio.alpn, fault, cors, router...) are not ours to run.
			continue
		}
		wf, err := loadWasm(w, resolve)
		if err != nil {
			return nil, fmt.Errorf("HTTP filter %d (%s): %w", i, hf.GetName(), err)
		}
		c.Wasm = append(c.Wasm, *wf)
	}
	return c, nil
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
		Module:   mod,
	}, nil
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
