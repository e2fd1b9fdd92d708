package wasmhost

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
)

// Validate checks what Envoy would need to load the filter: a WebAssembly binary with a
// proxy-wasm ABI export and only imports this host provides, that starts, accepts its VM start
// and accepts config under rootID. The error says which step failed and includes the filter's
// own error log lines.
func Validate(ctx context.Context, module []byte, rootID string, config []byte) error {
	return validate(ctx, module, rootID, config, nil)
}

func validate(ctx context.Context, module []byte, rootID string, config []byte, cache *Cache) error {
	return ValidateWith(ctx, PluginConfig{Cache: cache, Module: module, RootID: rootID, Configuration: config})
}

// ValidateWith is Validate with the limits of cfg (StartTimeout, MemoryLimit, Cache); it runs
// one instance, with its log discarded except what the error quotes.
func ValidateWith(ctx context.Context, cfg PluginConfig) error {
	cfg.Name, cfg.PoolSize, cfg.Logger = "validate", 1, slog.New(slog.DiscardHandler)
	p, err := NewPlugin(ctx, cfg)
	if err != nil {
		return err
	}
	return p.Close(ctx)
}

func checkMagic(b []byte) error {
	if len(b) < 8 || !bytes.Equal(b[:4], []byte("\x00asm")) {
		return errors.New("wasmhost: not a WebAssembly binary (missing \\0asm magic)")
	}
	if !bytes.Equal(b[4:8], []byte{1, 0, 0, 0}) {
		return fmt.Errorf("wasmhost: unsupported WebAssembly binary version %x (want 1, the core format)", b[4:8])
	}
	return nil
}

// checkModule refuses modules Envoy would not load, naming every reason (CheckModule).
func (p *Plugin) checkModule() error {
	info, err := checkCompiled(p.cfg.Module, p.compiled)
	if err != nil {
		return err
	}
	p.abi = "proxy_abi_version_" + strings.ReplaceAll(info.ABI, ".", "_")
	return nil
}
