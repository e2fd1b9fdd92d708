package wasmbuild

import (
	"bytes"
	"encoding/binary"
)

// Value types and the instructions the hostile-module tests need, as their binary opcodes.
const (
	I32 byte = 0x7f
	I64 byte = 0x7e

	OpUnreachable byte = 0x00
	OpLoop        byte = 0x03
	OpEnd         byte = 0x0b
	OpBr          byte = 0x0c
	OpBrIf        byte = 0x0d
	OpCall        byte = 0x10
	OpDrop        byte = 0x1a
	OpLocalGet    byte = 0x20
	OpLocalTee    byte = 0x22
	OpI32Store    byte = 0x36
	OpI32Const    byte = 0x41
	OpI32LtU      byte = 0x49
	OpI32Add      byte = 0x6a
	BlockEmpty    byte = 0x40
)

// Module is a tiny WebAssembly binary encoder, enough to build hostile modules of a few dozen
// bytes in a test (no toolchain can be talked into emitting most of them). Declare every
// import before the first Func: function indices count imports first.
type Module struct {
	types   [][2][]byte
	imports [][]byte
	funcs   []uint32 // type index of each defined function
	codes   [][]byte
	tables  [][]byte
	memory  []byte
	exports [][]byte
	start   *uint32
}

// Import declares a host function and returns its function index.
func (m *Module) Import(module, name string, params, results []byte) uint32 {
	if len(m.funcs) > 0 {
		panic("wasmbuild: Import after Func")
	}
	var b []byte
	b = appendName(b, module)
	b = appendName(b, name)
	b = append(b, 0x00)
	b = appendU(b, uint64(m.typ(params, results)))
	m.imports = append(m.imports, b)
	return uint32(len(m.imports) - 1)
}

// Func defines a function with extra i32 locals and a body (without the final end) and
// returns its function index.
func (m *Module) Func(params, results []byte, i32Locals uint32, body ...byte) uint32 {
	m.funcs = append(m.funcs, m.typ(params, results))
	var code []byte
	if i32Locals > 0 {
		code = appendU(code, 1)
		code = appendU(code, uint64(i32Locals))
		code = append(code, I32)
	} else {
		code = appendU(code, 0)
	}
	code = append(code, body...)
	code = append(code, OpEnd)
	m.codes = append(m.codes, code)
	return uint32(len(m.imports) + len(m.funcs) - 1)
}

// Export exports function index fn as name.
func (m *Module) Export(name string, fn uint32) {
	b := appendName(nil, name)
	b = append(b, 0x00)
	m.exports = append(m.exports, appendU(b, uint64(fn)))
}

// Memory defines memory 0 with min pages (and max pages unless max < 0), exported as
// exportName unless that is empty.
func (m *Module) Memory(min uint32, max int64, exportName string) {
	m.memory = appendLimits(nil, min, max)
	if exportName != "" {
		b := appendName(nil, exportName)
		b = append(b, 0x02, 0x00)
		m.exports = append(m.exports, b)
	}
}

// Table defines a funcref table of min entries (and max unless max < 0).
func (m *Module) Table(min uint32, max int64) {
	m.tables = append(m.tables, appendLimits([]byte{0x70}, min, max))
}

// Start makes fn the module's start function, run at instantiation.
func (m *Module) Start(fn uint32) { m.start = &fn }

// Bytes encodes the module.
func (m *Module) Bytes() []byte {
	out := []byte("\x00asm\x01\x00\x00\x00")
	section := func(id byte, items [][]byte) {
		if len(items) == 0 {
			return
		}
		body := appendU(nil, uint64(len(items)))
		for _, it := range items {
			body = append(body, it...)
		}
		out = append(out, id)
		out = appendU(out, uint64(len(body)))
		out = append(out, body...)
	}
	var types [][]byte
	for _, t := range m.types {
		b := []byte{0x60}
		b = appendU(b, uint64(len(t[0])))
		b = append(b, t[0]...)
		b = appendU(b, uint64(len(t[1])))
		types = append(types, append(b, t[1]...))
	}
	section(1, types)
	section(2, m.imports)
	var funcs [][]byte
	for _, f := range m.funcs {
		funcs = append(funcs, appendU(nil, uint64(f)))
	}
	section(3, funcs)
	section(4, m.tables)
	if m.memory != nil {
		section(5, [][]byte{m.memory})
	}
	section(7, m.exports)
	if m.start != nil {
		b := appendU(nil, uint64(*m.start))
		out = append(out, 8)
		out = appendU(out, uint64(len(b)))
		out = append(out, b...)
	}
	var codes [][]byte
	for _, c := range m.codes {
		codes = append(codes, append(appendU(nil, uint64(len(c))), c...))
	}
	section(10, codes)
	return out
}

func (m *Module) typ(params, results []byte) uint32 {
	for i, t := range m.types {
		if bytes.Equal(t[0], params) && bytes.Equal(t[1], results) {
			return uint32(i)
		}
	}
	m.types = append(m.types, [2][]byte{params, results})
	return uint32(len(m.types) - 1)
}

// I32c encodes i32.const v.
func I32c(v int32) []byte { return appendS([]byte{OpI32Const}, int64(v)) }

// Call encodes call fn.
func Call(fn uint32) []byte { return appendU([]byte{OpCall}, uint64(fn)) }

// Local encodes op (local.get, local.tee, ...) of local i.
func Local(op byte, i uint32) []byte { return appendU([]byte{op}, uint64(i)) }

// Cat concatenates instruction encodings.
func Cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func appendLimits(b []byte, min uint32, max int64) []byte {
	if max < 0 {
		return appendU(append(b, 0x00), uint64(min))
	}
	b = appendU(append(b, 0x01), uint64(min))
	return appendU(b, uint64(max))
}

func appendName(b []byte, s string) []byte {
	return append(appendU(b, uint64(len(s))), s...)
}

// appendU is unsigned LEB128, which is what Go's uvarint is.
func appendU(b []byte, v uint64) []byte { return binary.AppendUvarint(b, v) }

// appendS is signed LEB128 (Go's varint is zig-zag, a different encoding).
func appendS(b []byte, v int64) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}
