package wasmimage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/tetratelabs/wazero"

	"wasme.io/wasme/internal/wasmhost"
)

// ErrNotWasm is wrapped by errors about bytes that are not a usable Wasm module.
var ErrNotWasm = errors.New("not a WebAssembly module")

var wasmMagic = []byte{0x00, 'a', 's', 'm'}

// ErrNotFilter is wrapped by errors about valid WebAssembly that is not a proxy-wasm filter
// Envoy can load.
var ErrNotFilter = wasmhost.ErrNotFilter

// CheckHeader checks the Wasm magic bytes and binary version 1; it is the cheap check Pull
// always does, so a layer that is not wasm is refused before anything else sees it.
func CheckHeader(wasm []byte) error {
	if len(wasm) < 8 || !bytes.Equal(wasm[:4], wasmMagic) {
		n := min(len(wasm), 4)
		return fmt.Errorf("%w: bad magic bytes %q (want \"\\x00asm\")", ErrNotWasm, wasm[:n])
	}
	if v := uint32(wasm[4]) | uint32(wasm[5])<<8 | uint32(wasm[6])<<16 | uint32(wasm[7])<<24; v != 1 {
		return fmt.Errorf("%w: binary format version %d, want 1", ErrNotWasm, v)
	}
	return nil
}

// ValidateModule checks that wasm is a WebAssembly module that declares a proxy-wasm ABI: the
// header, a full compile by wazero (which validates every function body), and a
// proxy_abi_version_* export read as Envoy reads it. It returns that ABI version, as "v0.2.1",
// "v0.2.0" or "v0.1.0". Imports, exports and start-up are checked by internal/wasmhost
// (CheckModule, Validate).
func ValidateModule(ctx context.Context, wasm []byte) (abiVersion string, err error) {
	if err := CheckHeader(wasm); err != nil {
		return "", err
	}
	// The interpreter validates exactly as the compiler does and costs a fraction of the time
	// and memory of native compilation, which is thrown away here anyway.
	rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigInterpreter())
	defer rt.Close(ctx)
	mod, err := rt.CompileModule(ctx, wasm)
	if err != nil {
		return "", fmt.Errorf("%w: does not compile: %s", ErrNotWasm, firstLine(err.Error()))
	}
	defer mod.Close(ctx)
	abi, _, err := wasmhost.ABIVersion(wasm)
	if err != nil {
		return "", err
	}
	return "v" + abi, nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
