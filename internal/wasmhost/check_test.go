package wasmhost

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/tetratelabs/wazero"

	"wasme.io/wasme/internal/testing/wasmbuild"
)

// TestCheckModule: the load-time refusals of Envoy (proxy-wasm-cpp-host src/wasm.cc
// WasmBase::load/registerCallbacks/getFunctions, src/bytecode_util.cc getAbiVersion,
// src/v8/v8.cc link and getModuleFunctionImpl), each named in one error.
func TestCheckModule(t *testing.T) {
	f := wasmbuild.Filter
	with := func(s wasmbuild.Spec, exps ...wasmbuild.SpecExport) wasmbuild.Spec {
		s.Exports = append(slices.Clone(s.Exports), exps...)
		return s
	}
	imp := func(s wasmbuild.Spec, imps ...wasmbuild.SpecImport) wasmbuild.Spec {
		s.Imports = append(slices.Clone(s.Imports), imps...)
		return s
	}
	cases := []struct {
		name     string
		spec     wasmbuild.Spec
		abi      string
		warn     string
		wantErrs []string
	}{
		{name: "0.2.1", spec: f("0_2_1"), abi: "0.2.1"},
		{name: "0.1.0", spec: f("0_1_0"), abi: "0.1.0"},
		{name: "malloc instead of proxy_on_memory_allocate", spec: wasmbuild.Spec{Memory: true, Exports: []wasmbuild.SpecExport{wasmbuild.Exp("proxy_abi_version_0_2_0", "()->()"), wasmbuild.Exp("malloc", "(i32)->(i32)")}}, abi: "0.2.0"},
		{name: "WASI under both names", abi: "0.2.1", spec: imp(f("0_2_1"),
			wasmbuild.Imp("wasi_unstable", "proc_exit", "(i32)->()"),
			wasmbuild.Imp("wasi_snapshot_preview1", "fd_write", "(i32,i32,i32,i32)->(i32)"),
			wasmbuild.Imp("wasi_unstable", "clock_time_get", "(i32,i64,i32)->(i32)"))},
		{name: "both ABI exports: the first in export order wins", abi: "0.1.0", warn: "exports proxy_abi_version_0_1_0 and proxy_abi_version_0_2_1",
			spec: wasmbuild.Spec{Memory: true, Exports: []wasmbuild.SpecExport{wasmbuild.Exp("proxy_abi_version_0_1_0", "()->()"), wasmbuild.Exp("proxy_abi_version_0_2_1", "()->()"), wasmbuild.Exp("malloc", "(i32)->(i32)")}}},
		{name: "both ABI exports, the other order", abi: "0.2.1", warn: "runs as ABI 0.2.1",
			spec: wasmbuild.Spec{Memory: true, Exports: []wasmbuild.SpecExport{wasmbuild.Exp("proxy_abi_version_0_2_1", "()->()"), wasmbuild.Exp("proxy_abi_version_0_1_0", "()->()"), wasmbuild.Exp("malloc", "(i32)->(i32)")}}},
		{name: "0.1.0 functions in 0.1.0", abi: "0.1.0", spec: imp(f("0_1_0"),
			wasmbuild.Imp("env", "proxy_get_configuration", "(i32,i32)->(i32)"),
			wasmbuild.Imp("env", "proxy_continue_request", "()->(i32)"))},

		{name: "no ABI export", spec: wasmbuild.Spec{Memory: true, Exports: []wasmbuild.SpecExport{wasmbuild.Exp("malloc", "(i32)->(i32)")}},
			wantErrs: []string{"valid WebAssembly, but not a proxy-wasm filter: no proxy_abi_version_* export"}},
		{name: "unknown ABI version", spec: wasmbuild.Spec{Memory: true, Exports: []wasmbuild.SpecExport{wasmbuild.Exp("proxy_abi_version_0_3_0", "()->()")}},
			wantErrs: []string{"exports proxy_abi_version_0_3_0, an ABI version Envoy does not know"}},
		{name: "unknown imports, each named", spec: imp(f("0_2_1"),
			wasmbuild.Imp("env", "proxy_teleport", "(i32)->(i32)"),
			wasmbuild.Imp("env", "abort", "(i32,i32,i32,i32)->()"),
			wasmbuild.Imp("env", "seed", "()->(i64)"),
			wasmbuild.Imp("wasi_snapshot_preview1", "proc_raise", "(i32)->(i32)"),
			wasmbuild.Imp("my_host", "thing", "()->()")),
			wantErrs: []string{"missing import env.proxy_teleport(i32)->(i32)", "missing import env.abort(i32,i32,i32,i32)->() (AssemblyScript's default abort: build with --use abort=abort_proc_exit",
				"missing import env.seed()->(i64)", "missing import wasi_snapshot_preview1.proc_raise(i32)->(i32) (Envoy implements a subset of WASI)", "missing import my_host.thing()->()"}},
		{name: "a 0.1.0 function in 0.2.1", spec: imp(f("0_2_1"), wasmbuild.Imp("env", "proxy_get_configuration", "(i32,i32)->(i32)")),
			wantErrs: []string{"missing import env.proxy_get_configuration(i32,i32)->(i32) (only in ABI 0.1.0)"}},
		{name: "a 0.2.x function in 0.1.0", spec: imp(f("0_1_0"), wasmbuild.Imp("env", "proxy_continue_stream", "(i32)->(i32)"), wasmbuild.Imp("env", "proxy_get_log_level", "(i32)->(i32)")),
			wantErrs: []string{"missing import env.proxy_continue_stream(i32)->(i32) (only in ABI 0.2.0 and 0.2.1)", "missing import env.proxy_get_log_level(i32)->(i32) (only in ABI 0.2.1)"}},
		{name: "wrong import signature", spec: imp(f("0_2_1"), wasmbuild.Imp("env", "proxy_log", "(i32,i32)->(i32)")),
			wantErrs: []string{"import env.proxy_log has signature (i32,i32)->(i32), the host's is (i32,i32,i32)->(i32)"}},
		{name: "no allocator, no memory", spec: wasmbuild.Spec{Exports: []wasmbuild.SpecExport{wasmbuild.Exp("proxy_abi_version_0_2_1", "()->()")}},
			wantErrs: []string{"missing export malloc or proxy_on_memory_allocate (i32)->(i32)", "missing export memory"}},
		{name: "callback with the other ABI's signature", spec: with(f("0_1_0"), wasmbuild.Exp("proxy_on_request_headers", "(i32,i32,i32)->(i32)")),
			wantErrs: []string{"export proxy_on_request_headers has signature (i32,i32,i32)->(i32), ABI 0.1.0 wants (i32,i32)->(i32)"}},
		{name: "void callback returning a value", spec: with(f("0_2_1"), wasmbuild.Exp("proxy_on_tick", "(i32)->(i32)"), wasmbuild.Exp("proxy_on_configure", "(i32,i32)->()")),
			wantErrs: []string{"export proxy_on_tick has signature (i32)->(i32), ABI 0.2.1 wants (i32)->()", "export proxy_on_configure has signature (i32,i32)->(), ABI 0.2.1 wants (i32,i32)->(i32)"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			module := c.spec.Bytes()
			info, err := CheckModule(context.Background(), module)
			if len(c.wantErrs) == 0 {
				if err != nil {
					t.Fatalf("CheckModule: %v", err)
				}
				if info.ABI != c.abi {
					t.Errorf("ABI %q, want %q", info.ABI, c.abi)
				}
				if got := strings.Join(info.Warnings, "\n"); !strings.Contains(got, c.warn) || (c.warn == "") != (got == "") {
					t.Errorf("warnings %q, want %q", got, c.warn)
				}
				// NewPlugin runs the same check: the module loads (and starts: it has no code).
				if err := validate(context.Background(), module, "", nil, testCache()); err != nil {
					t.Errorf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("CheckModule accepted the module")
			}
			if !errors.Is(err, ErrNotFilter) {
				t.Errorf("error %v does not wrap ErrNotFilter", err)
			}
			for _, want := range c.wantErrs {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q\nlacks %q", err, want)
				}
			}
			if verr := validate(context.Background(), module, "", nil, testCache()); verr == nil || verr.Error() != err.Error() {
				t.Errorf("Validate's error %v differs from CheckModule's", verr)
			}
		})
	}
}

func TestCheckModuleNotWasm(t *testing.T) {
	for _, b := range [][]byte{nil, []byte("hello, world"), []byte("\x00asm\x01\x00\x00\x00\x07\x05\x01")} {
		if _, err := CheckModule(context.Background(), b); err == nil || errors.Is(err, ErrNotFilter) {
			t.Errorf("%q: error %v, want a format error", b, err)
		}
	}
}

// TestEveryHostFunctionIsKnown keeps the registered host functions and the import check's
// lists in step: a function the check accepts must be registered with that signature.
func TestEveryHostFunctionIsKnown(t *testing.T) {
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	defer rt.Close(ctx)
	p := &Plugin{rt: rt}
	if err := p.instantiateEnv(ctx); err != nil {
		t.Fatal(err)
	}
	if err := instantiateWASI(ctx, rt); err != nil {
		t.Fatal(err)
	}
	for _, abi := range []string{"0.1.0", "0.2.0", "0.2.1"} {
		for _, mod := range []string{"env", "wasi_unstable", "wasi_snapshot_preview1"} {
			defs := rt.Module(mod).ExportedFunctionDefinitions()
			names := append(slices.Collect(maps.Keys(envSignatures)), slices.Collect(maps.Keys(abiOnly))...)
			if mod != "env" {
				names = slices.Collect(maps.Keys(wasiSignatures))
			}
			for _, name := range names {
				want, ok := hostSignature(abi, mod, name)
				if !ok {
					continue
				}
				def, ok := defs[name]
				if !ok {
					t.Errorf("ABI %s: %s.%s is accepted but not registered", abi, mod, name)
					continue
				}
				if got := signature(def); got != want {
					t.Errorf("ABI %s: %s.%s registered as %s, checked as %s", abi, mod, name, got, want)
				}
			}
		}
	}
	if n := len(wasiSignatures); n != 45 {
		t.Errorf("%d WASI functions, Envoy has 45 (include/proxy-wasm/exports.h FOR_ALL_WASI_FUNCTIONS)", n)
	}
}
