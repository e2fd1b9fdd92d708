package wasmhost

import (
	"context"
	"strings"
	"testing"
	"time"

	"wasme.io/wasme/internal/testing/wasmbuild"
)

func TestValidate(t *testing.T) {
	ch := customHeader(t)
	pr := probe(t)
	tests := []struct {
		name    string
		module  []byte
		rootID  string
		config  string
		wantErr string // "" means valid
	}{
		{name: "custom-header defaults", module: ch, rootID: "add_header"},
		{name: "custom-header empty root id", module: ch},
		{name: "custom-header config", module: ch, rootID: "add_header", config: `{"name":"x-a","value":"b"}`},
		{name: "custom-header bad json", module: ch, rootID: "add_header", config: `{"name":`, wantErr: "configuration must be JSON"},
		{name: "custom-header unknown field", module: ch, rootID: "add_header", config: `{"nmae":"x"}`, wantErr: "rejected its configuration"},
		{name: "custom-header wrong root id", module: ch, rootID: "other", wantErr: `no root context named "other"`},
		{name: "trap in on_configure", module: pr, config: "trap-configure", wantErr: "proxy_on_configure"},
		{name: "reject in on_configure", module: pr, config: "reject", wantErr: "probe: configuration rejected on purpose"},
		{name: "not wasm", module: []byte("hello, world"), wantErr: "not a WebAssembly binary"},
		{name: "wasm component version", module: []byte("\x00asm\x0d\x00\x01\x00"), wantErr: "unsupported WebAssembly binary version"},
		{name: "truncated", module: ch[:1000], wantErr: "compile"},
		{name: "missing ABI export", module: wasmbuild.Spec{Memory: true, Exports: []wasmbuild.SpecExport{wasmbuild.Exp("_initialize", "()->()")}}.Bytes(),
			wantErr: "valid WebAssembly, but not a proxy-wasm filter: no proxy_abi_version_* export"},
		{name: "unknown host function", module: withImports(wasmbuild.Filter("0_2_1"), wasmbuild.Imp("env", "proxy_teleport", "()->()"), wasmbuild.Imp("env", "proxy_log", "()->()")),
			wantErr: "import env.proxy_log has signature ()->(), the host's is (i32,i32,i32)->(i32); missing import env.proxy_teleport()->()"},
		{name: "minimal module", module: wasmbuild.Filter("0_2_0").Bytes()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := validate(context.Background(), tc.module, tc.rootID, []byte(tc.config), testCache())
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Validate error %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

// TestValidatePublic runs the operator's entry point itself, without the test cache.
func TestValidatePublic(t *testing.T) {
	ch := customHeader(t)
	if err := Validate(context.Background(), ch, "add_header", []byte(`{"name":"x-a","value":"b"}`)); err != nil {
		t.Fatal(err)
	}
	err := Validate(context.Background(), ch, "add_header", []byte("nope"))
	if err == nil || !strings.Contains(err.Error(), "proxy_on_configure returned false") {
		t.Fatalf("error %v", err)
	}
}

func TestUnknownImportListsAll(t *testing.T) {
	err := Validate(context.Background(), withImports(wasmbuild.Filter("0_2_1"), wasmbuild.Imp("env", "proxy_teleport", "()->()"), wasmbuild.Imp("env", "proxy_fly", "()->()")), "", nil)
	if err == nil || !strings.Contains(err.Error(), "missing import env.proxy_fly()->(); missing import env.proxy_teleport()->()") {
		t.Fatalf("error %v should list both missing imports", err)
	}
}

func withImports(s wasmbuild.Spec, imps ...wasmbuild.SpecImport) []byte {
	s.Imports = append(s.Imports, imps...)
	return s.Bytes()
}

func TestStartFailures(t *testing.T) {
	pr := probe(t)
	tests := []struct {
		name    string
		cfg     PluginConfig
		wantErr string
	}{
		{"vm start returns false", PluginConfig{VMConfiguration: []byte("vm-start-false")}, "proxy_on_vm_start returned false"},
		{"loop in on_configure", PluginConfig{Configuration: []byte("loop-configure"), StartTimeout: 200 * time.Millisecond}, "proxy_on_configure did not return within 200ms"},
		{"memory limit below the module's needs", PluginConfig{MemoryLimit: 1 << 20}, "over limit of 16 pages"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Module = pr
			tc.cfg.Cache = testCache()
			p, err := NewPlugin(context.Background(), tc.cfg)
			if err == nil {
				p.Close(context.Background())
				t.Fatal("NewPlugin succeeded")
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestABIVersion(t *testing.T) {
	p, _ := newPlugin(t, PluginConfig{Module: customHeader(t), RootID: "add_header"})
	if got := p.ABIVersion(); got != "0.2.1" {
		t.Fatalf("ABIVersion %q", got)
	}
}
