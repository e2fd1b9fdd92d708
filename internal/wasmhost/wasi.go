package wasmhost

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/sys"
)

// WASI as Envoy provides it (proxy-wasm-cpp-host src/exports.cc, the wasi_unstable_*
// functions, registered under both wasi_unstable and wasi_snapshot_preview1 by src/wasm.cc):
// stdout and stderr go to the log, clocks and randomness work, everything that would touch a
// file system or a socket answers an error. No filter sees the host's files or arguments; its
// environment is what the plugin's VM config names (PluginConfig.Env), as in Envoy.

// WASI errno values.
const (
	errnoSuccess = 0
	errnoBadf    = 8
	errnoNotdir  = 20
	errnoFault   = 21
	errnoInval   = 28
	errnoNoent   = 44
	errnoNosys   = 52
	errnoNotsup  = 58
)

// randomGetMax is Envoy's bound on one random_get (PROXY_WASM_HOST_WASI_RANDOM_GET_MAX_SIZE_BYTES).
const randomGetMax = 64 << 10

type wasiFunc struct {
	name   string
	params string // i32 or i64 per parameter: "iIi" is (i32, i64, i32)
	void   bool   // proc_exit returns nothing
	fn     func(h *hc, a []uint64) uint32
}

// wasiSignatures are the WASI functions Envoy provides, with the signatures it registers
// them with (path_link and path_symlink take one parameter less than the WASI spec there; a
// module using the spec's signature does not load in Envoy either).
var wasiSignatures = func() map[string]string {
	m := map[string]string{}
	for _, f := range wasiFuncs() {
		m[f.name] = wasiSig(f)
	}
	return m
}()

func wasiSig(f wasiFunc) string {
	s := "("
	for i, c := range f.params {
		if i > 0 {
			s += ","
		}
		if c == 'I' {
			s += "i64"
		} else {
			s += "i32"
		}
	}
	if f.void {
		return s + ")->()"
	}
	return s + ")->(i32)"
}

func errnoOf(ok bool) uint32 {
	if ok {
		return errnoSuccess
	}
	return errnoFault
}

// onlyStdio is the answer of the fd functions Envoy accepts for stdout and stderr only.
func onlyStdio(fd uint32) uint32 {
	if fd != 1 && fd != 2 {
		return errnoBadf
	}
	return errnoSuccess
}

func constErrno(e uint32) func(*hc, []uint64) uint32 { return func(*hc, []uint64) uint32 { return e } }

func wasiFuncs() []wasiFunc {
	return []wasiFunc{
		{"fd_write", "iiii", false, func(h *hc, a []uint64) uint32 {
			n, e := h.writev(u32(a, 0), u32(a, 1), u32(a, 2))
			if e != errnoSuccess {
				return e
			}
			return errnoOf(h.mem.WriteUint32Le(u32(a, 3), n))
		}},
		{"fd_pwrite", "iiiIi", false, func(h *hc, a []uint64) uint32 {
			if e := onlyStdio(u32(a, 0)); e != errnoSuccess {
				return e
			}
			n, e := h.writev(u32(a, 0), u32(a, 1), u32(a, 2))
			if e != errnoSuccess {
				return e
			}
			return errnoOf(h.mem.WriteUint32Le(u32(a, 4), n))
		}},
		{"fd_read", "iiii", false, constErrno(errnoNosys)},
		{"fd_pread", "iiiIi", false, constErrno(errnoNosys)},
		{"fd_seek", "iIii", false, constErrno(errnoSuccess)}, // Envoy logs and answers success
		{"fd_close", "i", false, constErrno(errnoSuccess)},   // likewise
		{"fd_fdstat_get", "ii", false, func(h *hc, a []uint64) uint32 {
			if e := onlyStdio(u32(a, 0)); e != errnoSuccess {
				return e
			}
			var st [24]byte
			binary.LittleEndian.PutUint64(st[8:], 64) // fs_rights_base: FD_WRITE
			h.mem.Write(u32(a, 1), st[:])             // Envoy ignores a failed write here
			return errnoSuccess
		}},
		{"fd_fdstat_set_flags", "ii", false, constErrno(errnoNosys)},
		{"fd_fdstat_set_rights", "iII", false, func(h *hc, a []uint64) uint32 { return onlyStdio(u32(a, 0)) }},
		{"environ_get", "ii", false, func(h *hc, a []uint64) uint32 { return h.environGet(u32(a, 0), u32(a, 1)) }},
		{"environ_sizes_get", "ii", false, func(h *hc, a []uint64) uint32 {
			n, size := h.environSizes()
			if !h.mem.WriteUint32Le(u32(a, 0), n) || !h.mem.WriteUint32Le(u32(a, 1), size) {
				return errnoFault
			}
			return errnoSuccess
		}},
		{"args_get", "ii", false, constErrno(errnoSuccess)},
		{"args_sizes_get", "ii", false, func(h *hc, a []uint64) uint32 { return h.zeroWords(u32(a, 0), u32(a, 1)) }},
		{"clock_time_get", "iIi", false, func(h *hc, a []uint64) uint32 {
			var t uint64
			switch u32(a, 0) {
			case 0:
				t = uint64(time.Now().UnixNano())
			case 1:
				t = uint64(monotonicNanos())
			default:
				return errnoNotsup
			}
			return errnoOf(h.mem.WriteUint64Le(u32(a, 2), t))
		}},
		{"clock_res_get", "ii", false, func(h *hc, a []uint64) uint32 {
			if c := u32(a, 0); c > 1 {
				return errnoNotsup
			}
			return errnoOf(h.mem.WriteUint64Le(u32(a, 1), 1))
		}},
		{"fd_advise", "iIIi", false, constErrno(errnoSuccess)},
		{"fd_allocate", "iII", false, func(h *hc, a []uint64) uint32 { return onlyStdio(u32(a, 0)) }},
		{"fd_datasync", "i", false, func(h *hc, a []uint64) uint32 { return onlyStdio(u32(a, 0)) }},
		{"fd_filestat_set_size", "iI", false, func(h *hc, a []uint64) uint32 { return onlyStdio(u32(a, 0)) }},
		{"fd_filestat_set_times", "iIIi", false, func(h *hc, a []uint64) uint32 { return onlyStdio(u32(a, 0)) }},
		{"fd_readdir", "iiiIi", false, func(h *hc, a []uint64) uint32 {
			if !h.mem.WriteUint32Le(u32(a, 4), 0) {
				return errnoFault
			}
			return errnoNotdir
		}},
		{"fd_renumber", "ii", false, func(h *hc, a []uint64) uint32 {
			if onlyStdio(u32(a, 0)) != errnoSuccess || onlyStdio(u32(a, 1)) != errnoSuccess {
				return errnoBadf
			}
			return errnoNotsup
		}},
		{"fd_sync", "i", false, func(h *hc, a []uint64) uint32 { return onlyStdio(u32(a, 0)) }},
		{"fd_tell", "ii", false, func(h *hc, a []uint64) uint32 {
			if e := onlyStdio(u32(a, 0)); e != errnoSuccess {
				return e
			}
			return errnoOf(h.mem.WriteUint64Le(u32(a, 1), 0))
		}},
		{"fd_prestat_get", "ii", false, constErrno(errnoBadf)}, // no preopened directories
		{"fd_prestat_dir_name", "iii", false, constErrno(errnoNosys)},
		{"fd_filestat_get", "ii", false, constErrno(errnoBadf)},
		{"path_open", "iiiiiIIii", false, constErrno(errnoNoent)},
		{"path_filestat_get", "iiiii", false, constErrno(errnoNotsup)},
		{"path_create_directory", "iii", false, constErrno(errnoNotsup)},
		{"path_filestat_set_times", "iiiiIIi", false, constErrno(errnoNotsup)},
		{"path_link", "iiiiii", false, constErrno(errnoNotsup)},
		{"path_readlink", "iiiiii", false, func(h *hc, a []uint64) uint32 {
			if !h.mem.WriteUint32Le(u32(a, 5), 0) {
				return errnoFault
			}
			return errnoNotsup
		}},
		{"path_remove_directory", "iii", false, constErrno(errnoNotsup)},
		{"path_rename", "iiiiii", false, constErrno(errnoNotsup)},
		{"path_symlink", "iiii", false, constErrno(errnoNotsup)},
		{"path_unlink_file", "iii", false, constErrno(errnoNotsup)},
		{"sock_accept", "iii", false, func(h *hc, a []uint64) uint32 {
			if !h.mem.WriteUint64Le(u32(a, 2), 0) {
				return errnoFault
			}
			return errnoNotsup
		}},
		{"sock_recv", "iiiiii", false, func(h *hc, a []uint64) uint32 {
			if !h.mem.WriteUint32Le(u32(a, 4), 0) || !h.mem.WriteUint16Le(u32(a, 5), 0) {
				return errnoFault
			}
			return errnoNotsup
		}},
		{"sock_send", "iiiii", false, func(h *hc, a []uint64) uint32 {
			if !h.mem.WriteUint32Le(u32(a, 4), 0) {
				return errnoFault
			}
			return errnoNotsup
		}},
		{"sock_shutdown", "ii", false, constErrno(errnoNotsup)},
		{"random_get", "ii", false, func(h *hc, a []uint64) uint32 {
			n := u32(a, 1)
			if n > randomGetMax {
				return errnoInval
			}
			if n == 0 {
				return errnoSuccess
			}
			b := make([]byte, n)
			_, _ = rand.Read(b)
			return errnoOf(h.mem.Write(u32(a, 0), b))
		}},
		{"sched_yield", "", false, constErrno(errnoSuccess)},
		// Envoy answers at once with no events; the Go runtime needs success here.
		{"poll_oneoff", "iiii", false, func(h *hc, a []uint64) uint32 {
			return errnoOf(h.mem.WriteUint32Le(u32(a, 3), 0))
		}},
		// Envoy logs proc_exit and returns, and every SDK follows it with a trap; this host
		// stops the instance right away, reporting the exit code.
		{"proc_exit", "i", true, func(h *hc, a []uint64) uint32 {
			panic(sys.NewExitError(u32(a, 0)))
		}},
	}
}

var monoStart = time.Now()

func monotonicNanos() int64 { return int64(time.Since(monoStart)) + 1 }

// environSizes is the count of the VM's environment entries and the bytes they take, each
// "NAME=value" NUL-terminated.
func (h *hc) environSizes() (n, size uint32) {
	for _, e := range h.in.p.cfg.Env {
		size += uint32(len(e)) + 1 //nolint:gosec // G115: NewPlugin bounds the environment
	}
	return uint32(len(h.in.p.cfg.Env)), size //nolint:gosec // G115: likewise
}

// environGet writes the environment as WASI lays it out: a pointer per entry at environ,
// the NUL-terminated entries from buf on.
func (h *hc) environGet(environ, buf uint32) uint32 {
	for i, e := range h.in.p.cfg.Env {
		if !h.mem.WriteUint32Le(environ+4*uint32(i), buf) || !h.mem.WriteString(buf, e) || !h.mem.WriteByte(buf+uint32(len(e)), 0) { //nolint:gosec // G115: bounded by NewPlugin
			return errnoFault
		}
		buf += uint32(len(e)) + 1 //nolint:gosec // G115: likewise
	}
	return errnoSuccess
}

// zeroWords writes 0 to two u32 out-pointers (no arguments).
func (h *hc) zeroWords(p1, p2 uint32) uint32 {
	if !h.mem.WriteUint32Le(p1, 0) || !h.mem.WriteUint32Le(p2, 0) {
		return errnoFault
	}
	return errnoSuccess
}

// writev gathers an iovec list for stdout (info) or stderr (error) into the filter's log.
func (h *hc) writev(fd, iovs, n uint32) (uint32, uint32) {
	level := LogInfo
	switch fd {
	case 1:
	case 2:
		level = LogError
	default:
		return 0, errnoBadf
	}
	var data []byte
	for i := uint32(0); i < n; i++ {
		vec, ok := h.mem.Read(iovs+8*i, 8)
		if !ok || uint64(iovs)+8*uint64(i)+8 > uint64(h.mem.Size()) {
			return 0, errnoFault
		}
		buf, size := binary.LittleEndian.Uint32(vec), binary.LittleEndian.Uint32(vec[4:])
		if size == 0 {
			continue
		}
		b, ok := h.mem.Read(buf, size)
		if !ok {
			return 0, errnoFault
		}
		data = append(data, b...)
	}
	if len(data) > 0 {
		h.in.guestWrite(level, data)
	}
	return uint32(len(data)), errnoSuccess
}

// instantiateWASI provides the WASI functions under both module names Envoy registers.
func instantiateWASI(ctx context.Context, rt wazero.Runtime) error {
	for _, mod := range []string{"wasi_snapshot_preview1", "wasi_unstable"} {
		b := rt.NewHostModuleBuilder(mod)
		for _, f := range wasiFuncs() {
			f := f
			params := make([]api.ValueType, len(f.params))
			for i, c := range f.params {
				params[i] = i32
				if c == 'I' {
					params[i] = i64
				}
			}
			var results []api.ValueType
			if !f.void {
				results = []api.ValueType{i32}
			}
			b.NewFunctionBuilder().
				WithGoModuleFunction(api.GoModuleFunc(func(ctx context.Context, m api.Module, stack []uint64) {
					in := instanceFrom(ctx)
					if in == nil || m.Memory() == nil {
						if !f.void {
							stack[0] = errnoFault
						}
						return
					}
					e := f.fn(&hc{ctx: ctx, in: in, mem: m.Memory()}, stack)
					if !f.void {
						stack[0] = uint64(e)
					}
				}), params, results).
				Export(f.name)
		}
		if _, err := b.Instantiate(ctx); err != nil {
			return err
		}
	}
	return nil
}

// guestWrite logs what the guest wrote to stdout or stderr, a line at a time.
func (in *instance) guestWrite(level LogLevel, b []byte) {
	g := &in.wasiOut[0]
	if level == LogError {
		g = &in.wasiOut[1]
	}
	g.in, g.level = in, level
	_, _ = g.Write(b)
}
