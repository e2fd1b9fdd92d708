package wasmhost

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

// ErrNotFilter is wrapped by CheckModule's errors about a valid WebAssembly module that Envoy
// (and this host) cannot load as a proxy-wasm filter.
var ErrNotFilter = errors.New("not a proxy-wasm filter")

// ModuleInfo is what CheckModule learned about a filter module.
type ModuleInfo struct {
	// ABI is the proxy-wasm ABI version the host will use, e.g. "0.2.1".
	ABI string
	// Warnings are things that load but are probably not what the author meant, e.g. two ABI
	// version exports.
	Warnings []string
}

// CheckModule decides, without running it, whether Envoy would load module as a proxy-wasm
// filter: a WebAssembly binary with a known proxy_abi_version_* export, only imports the host
// provides for that ABI version (with the right signatures), an allocator export, and callbacks
// with the signatures the ABI gives them. Every missing import and every bad export is named.
// It is the check wasme build, wasme push and the operator's validation share; NewPlugin runs
// the same one on its compiled module.
func CheckModule(ctx context.Context, module []byte) (ModuleInfo, error) {
	if err := checkMagic(module); err != nil {
		return ModuleInfo{}, err
	}
	// The interpreter validates a module as the compiler does, at a fraction of the cost.
	rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigInterpreter())
	defer rt.Close(context.WithoutCancel(ctx))
	compiled, err := rt.CompileModule(ctx, module)
	if err != nil {
		return ModuleInfo{}, fmt.Errorf("wasmhost: compile: %w", err)
	}
	return checkCompiled(module, compiled)
}

// checkCompiled runs the load-time checks on a compiled module; module is its binary, read for
// the export order that decides the ABI version.
func checkCompiled(module []byte, compiled wazero.CompiledModule) (ModuleInfo, error) {
	var info ModuleInfo
	abi, warnings, err := ABIVersion(module)
	if err != nil {
		return info, err
	}
	info.ABI, info.Warnings = abi, warnings

	var problems []string
	for _, def := range compiled.ImportedFunctions() {
		mod, name, _ := def.Import()
		want, ok := hostSignature(info.ABI, mod, name)
		switch {
		case !ok:
			problems = append(problems, "missing import "+mod+"."+name+signature(def)+importHint(info.ABI, mod, name))
		case want != signature(def):
			problems = append(problems, fmt.Sprintf("import %s.%s has signature %s, the host's is %s", mod, name, signature(def), want))
		}
	}
	for _, def := range compiled.ImportedMemories() {
		mod, name, _ := def.Import()
		problems = append(problems, "missing import "+mod+"."+name+" (memory: the module must define and export its own)")
	}
	// Envoy takes an exported memory of any name (src/v8/v8.cc link); this host wants the name
	// every toolchain gives it.
	exports := compiled.ExportedFunctions()
	if _, ok := compiled.ExportedMemories()[memoryExport]; !ok {
		problems = append(problems, `missing export memory: the module exports no memory named "memory", through which every host call passes its values`)
	}
	if exports["malloc"] == nil && exports["proxy_on_memory_allocate"] == nil {
		problems = append(problems, "missing export malloc or proxy_on_memory_allocate (i32)->(i32)")
	}
	for name, def := range exports {
		if want, ok := callbackSignature(info.ABI, name); ok && want != signature(def) {
			problems = append(problems, fmt.Sprintf("export %s has signature %s, ABI %s wants %s", name, signature(def), info.ABI, want))
		}
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		return info, fmt.Errorf("wasmhost: %w (ABI %s): %s", ErrNotFilter, info.ABI, strings.Join(problems, "; "))
	}
	return info, nil
}

// ABIVersion reads the proxy-wasm ABI version a module declares, as Envoy does: the first
// known proxy_abi_version_* function export in export order (proxy-wasm-cpp-host
// src/bytecode_util.cc, BytecodeUtil::getAbiVersion). Several known markers load, with a
// warning; none, or only unknown ones, do not.
func ABIVersion(module []byte) (abi string, warnings []string, err error) {
	markers, err := abiMarkers(module)
	if err != nil {
		return "", nil, fmt.Errorf("wasmhost: %w", err)
	}
	known := slices.DeleteFunc(slices.Clone(markers), func(m string) bool { return !slices.Contains(abiVersions, m) })
	switch {
	case len(markers) == 0:
		return "", nil, fmt.Errorf("wasmhost: valid WebAssembly, but %w: no proxy_abi_version_* export", ErrNotFilter)
	case len(known) == 0:
		return "", nil, fmt.Errorf("wasmhost: valid WebAssembly, but %w: it exports %s, an ABI version Envoy does not know (known: %s)",
			ErrNotFilter, strings.Join(markers, ", "), strings.Join(abiVersions, ", "))
	}
	abi = abiName(known[0])
	if len(known) > 1 {
		warnings = append(warnings, fmt.Sprintf("the module exports %s; Envoy uses the first in export order, so it runs as ABI %s",
			strings.Join(known, " and "), abi))
	}
	return abi, warnings, nil
}

func abiName(marker string) string {
	return strings.ReplaceAll(strings.TrimPrefix(marker, "proxy_abi_version_"), "_", ".")
}

// importHint says why a well-known import is missing.
func importHint(abi, mod, name string) string {
	if mod == "env" {
		if abi2, ok := abiOnly[name]; ok {
			return fmt.Sprintf(" (only in ABI %s)", abi2)
		}
		switch name {
		case "abort":
			return " (AssemblyScript's default abort: build with --use abort=abort_proc_exit, as the wasme template does)"
		case "seed":
			return " (AssemblyScript's Math.random seed: Envoy provides none)"
		}
	}
	if mod == "wasi_unstable" || mod == "wasi_snapshot_preview1" {
		return " (Envoy implements a subset of WASI)"
	}
	return ""
}

// abiOnly names the env functions Envoy registers for one ABI version only
// (proxy-wasm-cpp-host src/wasm.cc, WasmBase::registerCallbacks).
var abiOnly = map[string]string{
	"proxy_get_configuration": "0.1.0",
	"proxy_continue_request":  "0.1.0",
	"proxy_continue_response": "0.1.0",
	"proxy_clear_route_cache": "0.1.0",
	"proxy_continue_stream":   "0.2.0 and 0.2.1",
	"proxy_close_stream":      "0.2.0 and 0.2.1",
	"proxy_get_log_level":     "0.2.1",
}

// hostSignature is the signature of the host function mod.name under abi, if Envoy provides it.
func hostSignature(abi, mod, name string) (string, bool) {
	switch mod {
	case "wasi_unstable", "wasi_snapshot_preview1":
		s, ok := wasiSignatures[name]
		return s, ok
	case "env":
	default:
		return "", false
	}
	if s, ok := envSignatures[name]; ok {
		return s, true
	}
	var s string
	switch abi {
	case "0.1.0":
		s = map[string]string{
			"proxy_get_configuration": "(i32,i32)->(i32)",
			"proxy_continue_request":  "()->(i32)",
			"proxy_continue_response": "()->(i32)",
			"proxy_clear_route_cache": "()->(i32)",
		}[name]
	case "0.2.0", "0.2.1":
		s = map[string]string{
			"proxy_continue_stream": "(i32)->(i32)",
			"proxy_close_stream":    "(i32)->(i32)",
		}[name]
		if abi == "0.2.1" && name == "proxy_get_log_level" {
			s = "(i32)->(i32)"
		}
	}
	return s, s != ""
}

// envSignatures are the env functions Envoy registers for every ABI version
// (proxy-wasm-cpp-host include/proxy-wasm/exports.h, FOR_ALL_HOST_FUNCTIONS, plus the two
// Emscripten helpers of src/wasm.cc). Word parameters are i32 in wasm32.
var envSignatures = map[string]string{
	"proxy_log":                          "(i32,i32,i32)->(i32)",
	"proxy_get_status":                   "(i32,i32,i32)->(i32)",
	"proxy_set_property":                 "(i32,i32,i32,i32)->(i32)",
	"proxy_get_property":                 "(i32,i32,i32,i32)->(i32)",
	"proxy_send_local_response":          "(i32,i32,i32,i32,i32,i32,i32,i32)->(i32)",
	"proxy_get_shared_data":              "(i32,i32,i32,i32,i32)->(i32)",
	"proxy_set_shared_data":              "(i32,i32,i32,i32,i32)->(i32)",
	"proxy_register_shared_queue":        "(i32,i32,i32)->(i32)",
	"proxy_resolve_shared_queue":         "(i32,i32,i32,i32,i32)->(i32)",
	"proxy_dequeue_shared_queue":         "(i32,i32,i32)->(i32)",
	"proxy_enqueue_shared_queue":         "(i32,i32,i32)->(i32)",
	"proxy_get_header_map_value":         "(i32,i32,i32,i32,i32)->(i32)",
	"proxy_add_header_map_value":         "(i32,i32,i32,i32,i32)->(i32)",
	"proxy_replace_header_map_value":     "(i32,i32,i32,i32,i32)->(i32)",
	"proxy_remove_header_map_value":      "(i32,i32,i32)->(i32)",
	"proxy_get_header_map_pairs":         "(i32,i32,i32)->(i32)",
	"proxy_set_header_map_pairs":         "(i32,i32,i32)->(i32)",
	"proxy_get_header_map_size":          "(i32,i32)->(i32)",
	"proxy_get_buffer_status":            "(i32,i32,i32)->(i32)",
	"proxy_get_buffer_bytes":             "(i32,i32,i32,i32,i32)->(i32)",
	"proxy_set_buffer_bytes":             "(i32,i32,i32,i32,i32)->(i32)",
	"proxy_http_call":                    "(i32,i32,i32,i32,i32,i32,i32,i32,i32,i32)->(i32)",
	"proxy_grpc_call":                    "(i32,i32,i32,i32,i32,i32,i32,i32,i32,i32,i32,i32)->(i32)",
	"proxy_grpc_stream":                  "(i32,i32,i32,i32,i32,i32,i32,i32,i32)->(i32)",
	"proxy_grpc_close":                   "(i32)->(i32)",
	"proxy_grpc_cancel":                  "(i32)->(i32)",
	"proxy_grpc_send":                    "(i32,i32,i32,i32)->(i32)",
	"proxy_set_tick_period_milliseconds": "(i32)->(i32)",
	"proxy_get_current_time_nanoseconds": "(i32)->(i32)",
	"proxy_define_metric":                "(i32,i32,i32,i32)->(i32)",
	"proxy_increment_metric":             "(i32,i64)->(i32)",
	"proxy_record_metric":                "(i32,i64)->(i32)",
	"proxy_get_metric":                   "(i32,i32)->(i32)",
	"proxy_set_effective_context":        "(i32)->(i32)",
	"proxy_done":                         "()->(i32)",
	"proxy_call_foreign_function":        "(i32,i32,i32,i32,i32,i32)->(i32)",
	"pthread_equal":                      "(i32,i32)->(i32)",
	"emscripten_notify_memory_growth":    "(i32)->()",
}

// callbackSignature is the signature Envoy requires of an export it calls, under abi
// (proxy-wasm-cpp-host include/proxy-wasm/wasm.h, the WasmCallWord/WasmCallVoid members, and
// src/wasm.cc, WasmBase::getFunctions). Exports it does not call may have any signature.
func callbackSignature(abi, name string) (string, bool) {
	word := func(n int) string { return "(" + strings.Repeat("i32,", n)[:max(0, 4*n-1)] + ")->(i32)" }
	void := func(n int) string { return "(" + strings.Repeat("i32,", n)[:max(0, 4*n-1)] + ")->()" }
	switch name {
	case "_initialize", "_start":
		return void(0), true
	case "main":
		return word(2), true
	case "__main_void":
		return word(0), true
	case "malloc", "proxy_on_memory_allocate":
		return word(1), true
	case "proxy_validate_configuration", "proxy_on_vm_start", "proxy_on_configure":
		return word(2), true
	case "proxy_on_tick", "proxy_on_log", "proxy_on_delete":
		return void(1), true
	case "proxy_on_done", "proxy_on_new_connection":
		return word(1), true
	case "proxy_on_context_create", "proxy_on_downstream_connection_close", "proxy_on_upstream_connection_close", "proxy_on_queue_ready":
		return void(2), true
	case "proxy_on_downstream_data", "proxy_on_upstream_data", "proxy_on_request_body", "proxy_on_response_body":
		return word(3), true
	case "proxy_on_request_trailers", "proxy_on_request_metadata", "proxy_on_response_trailers", "proxy_on_response_metadata":
		return word(2), true
	case "proxy_on_request_headers", "proxy_on_response_headers":
		if abi == "0.1.0" {
			return word(2), true
		}
		return word(3), true
	case "proxy_on_http_call_response":
		return void(5), true
	case "proxy_on_grpc_receive", "proxy_on_grpc_close", "proxy_on_grpc_receive_initial_metadata", "proxy_on_grpc_receive_trailing_metadata":
		return void(3), true
	case "proxy_on_foreign_function":
		if abi == "0.1.0" {
			return "", false
		}
		return void(3), true
	}
	return "", false
}

func signature(d api.FunctionDefinition) string {
	name := func(ts []api.ValueType) string {
		s := make([]string, len(ts))
		for i, t := range ts {
			s[i] = api.ValueTypeName(t)
		}
		return "(" + strings.Join(s, ",") + ")"
	}
	return name(d.ParamTypes()) + "->" + name(d.ResultTypes())
}

// abiMarkers lists the function exports named proxy_abi_version_*, in export order. It reads
// the export section only and refuses lengths that run past the binary.
func abiMarkers(b []byte) ([]string, error) {
	corrupt := errors.New("corrupt WebAssembly binary: an export section length runs past the end")
	if len(b) < 8 {
		return nil, corrupt
	}
	pos := 8
	uleb := func() (uint64, bool) {
		var v uint64
		for shift := 0; shift < 35; shift += 7 {
			if pos >= len(b) {
				return 0, false
			}
			c := b[pos]
			pos++
			v |= uint64(c&0x7f) << shift
			if c&0x80 == 0 {
				return v, true
			}
		}
		return 0, false
	}
	for pos < len(b) {
		id := b[pos]
		pos++
		size, ok := uleb()
		if !ok || size > uint64(len(b)-pos) {
			return nil, corrupt
		}
		end := pos + int(size)
		if id != 7 {
			pos = end
			continue
		}
		n, ok := uleb()
		if !ok {
			return nil, corrupt
		}
		var out []string
		for i := uint64(0); i < n; i++ {
			l, ok := uleb()
			if !ok || l > uint64(end-pos) {
				return nil, corrupt
			}
			name := string(b[pos : pos+int(l)])
			pos += int(l)
			if pos >= end {
				return nil, corrupt
			}
			kind := b[pos]
			pos++
			if _, ok := uleb(); !ok || pos > end {
				return nil, corrupt
			}
			if kind == 0 && strings.HasPrefix(name, "proxy_abi_version_") {
				out = append(out, name)
			}
		}
		return out, nil
	}
	return nil, nil
}
