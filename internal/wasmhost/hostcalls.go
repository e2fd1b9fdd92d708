package wasmhost

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/tetratelabs/wazero/api"
)

// hc is the state of one host function call.
type hc struct {
	ctx context.Context
	in  *instance
	mem api.Memory
}

// read copies guest memory: a view would go stale when the guest's memory grows during a
// later allocation.
func (h *hc) read(ptr, size uint32) ([]byte, bool) {
	b, ok := h.mem.Read(ptr, size)
	if !ok {
		return nil, false
	}
	return bytes.Clone(b), true
}

func (h *hc) writable(ptr, n uint32) bool {
	return uint64(ptr)+uint64(n) <= uint64(h.mem.Size())
}

func (h *hc) putU32(ptr, v uint32) Status {
	if !h.mem.WriteUint32Le(ptr, v) {
		return StatusInvalidMemoryAccess
	}
	return StatusOK
}

// alloc asks the guest's allocator for n bytes.
func (h *hc) alloc(n int) (uint32, Status) {
	if n > math.MaxUint32 {
		return 0, StatusBadArgument
	}
	f := h.in.fn("proxy_on_memory_allocate")
	if f == nil {
		f = h.in.fn("malloc")
	}
	if f == nil {
		return 0, StatusInternalFailure
	}
	res, err := f.Call(h.ctx, uint64(n))
	if err != nil {
		h.in.fail(fmt.Errorf("wasmhost: the guest allocator failed: %w", err))
		return 0, StatusInternalFailure
	}
	if len(res) == 0 || uint32(res[0]) == 0 {
		return 0, StatusInternalFailure
	}
	return uint32(res[0]), StatusOK
}

// giveBytes hands data to the guest in memory it allocates, writing the address and size to
// the return pointers. Both pointers are checked before the guest allocates anything.
func (h *hc) giveBytes(data []byte, retData, retSize uint32) Status {
	if !h.writable(retData, 4) || !h.writable(retSize, 4) {
		return StatusInvalidMemoryAccess
	}
	var addr uint32
	if len(data) > 0 {
		var st Status
		if addr, st = h.alloc(len(data)); st != StatusOK {
			return st
		}
		if !h.mem.Write(addr, data) {
			return StatusInvalidMemoryAccess
		}
	}
	if st := h.putU32(retData, addr); st != StatusOK {
		return st
	}
	return h.putU32(retSize, uint32(len(data)))
}

type hostFunc struct {
	name    string
	params  []api.ValueType
	results []api.ValueType
	fn      func(h *hc, a []uint64) Status
}

var i32, i64 = api.ValueTypeI32, api.ValueTypeI64

func i32s(n int) []api.ValueType {
	t := make([]api.ValueType, n)
	for i := range t {
		t[i] = i32
	}
	return t
}

// fn declares a host function with n i32 parameters returning a proxy_status_t.
func fn(name string, n int, f func(h *hc, a []uint64) Status) hostFunc {
	return hostFunc{name: name, params: i32s(n), results: []api.ValueType{i32}, fn: f}
}

// unimplemented declares a host function of the ABI this host does not provide: it answers
// UNIMPLEMENTED instead of pretending to succeed.
func unimplemented(name string, n int) hostFunc {
	return fn(name, n, func(*hc, []uint64) Status { return StatusUnimplemented })
}

func u32(a []uint64, i int) uint32 { return api.DecodeU32(a[i]) }

// instantiateEnv provides the proxy-wasm host functions as module "env".
func (p *Plugin) instantiateEnv(ctx context.Context) error {
	b := p.rt.NewHostModuleBuilder("env")
	for _, f := range hostFuncs() {
		f := f
		b.NewFunctionBuilder().
			WithGoModuleFunction(api.GoModuleFunc(func(ctx context.Context, mod api.Module, stack []uint64) {
				in := instanceFrom(ctx)
				if in == nil {
					if len(f.results) > 0 {
						stack[0] = uint64(StatusInternalFailure)
					}
					return
				}
				st := f.fn(&hc{ctx: ctx, in: in, mem: mod.Memory()}, stack)
				if len(f.results) > 0 && f.results[0] == i32 {
					stack[0] = uint64(st)
				}
			}), f.params, f.results).
			Export(f.name)
	}
	_, err := b.Instantiate(ctx)
	return err
}

func hostFuncs() []hostFunc {
	return []hostFunc{
		fn("proxy_log", 3, func(h *hc, a []uint64) Status {
			level := LogLevel(u32(a, 0))
			if level > LogCritical {
				return StatusBadArgument
			}
			msg, ok := h.read(u32(a, 1), u32(a, 2))
			if !ok {
				return StatusInvalidMemoryAccess
			}
			h.in.logLine(level, string(msg))
			return StatusOK
		}),
		fn("proxy_get_log_level", 1, func(h *hc, a []uint64) Status {
			return h.putU32(u32(a, 0), uint32(h.in.p.cfg.LogLevel))
		}),
		fn("proxy_get_current_time_nanoseconds", 1, func(h *hc, a []uint64) Status {
			if !h.mem.WriteUint64Le(u32(a, 0), uint64(time.Now().UnixNano())) {
				return StatusInvalidMemoryAccess
			}
			return StatusOK
		}),
		fn("proxy_set_tick_period_milliseconds", 1, func(h *hc, a []uint64) Status {
			h.in.setTick(time.Duration(u32(a, 0)) * time.Millisecond)
			return StatusOK
		}),

		fn("proxy_get_buffer_bytes", 5, func(h *hc, a []uint64) Status {
			buf, st := h.buffer(u32(a, 0))
			if st != StatusOK {
				return st
			}
			start, max := uint64(u32(a, 1)), uint64(u32(a, 2))
			if start > uint64(len(*buf)) {
				return StatusBadArgument
			}
			end := min(start+max, uint64(len(*buf)))
			return h.giveBytes((*buf)[start:end], u32(a, 3), u32(a, 4))
		}),
		fn("proxy_set_buffer_bytes", 5, func(h *hc, a []uint64) Status {
			bt := u32(a, 0)
			buf, st := h.buffer(bt)
			if st != StatusOK {
				return st
			}
			if bt != bufRequestBody && bt != bufResponseBody {
				return StatusBadArgument // configurations are read-only
			}
			data, ok := h.read(u32(a, 3), u32(a, 4))
			if !ok {
				return StatusInvalidMemoryAccess
			}
			n := uint64(len(*buf))
			start := min(uint64(u32(a, 1)), n)
			end := min(start+uint64(u32(a, 2)), n)
			out := make([]byte, 0, n-(end-start)+uint64(len(data)))
			out = append(out, (*buf)[:start]...)
			out = append(out, data...)
			out = append(out, (*buf)[end:]...)
			*buf = out
			return StatusOK
		}),
		fn("proxy_get_buffer_status", 3, func(h *hc, a []uint64) Status {
			buf, st := h.buffer(u32(a, 0))
			if st != StatusOK {
				return st
			}
			if !h.writable(u32(a, 2), 4) {
				return StatusInvalidMemoryAccess
			}
			if st := h.putU32(u32(a, 1), uint32(len(*buf))); st != StatusOK {
				return st
			}
			return h.putU32(u32(a, 2), 0)
		}),
		fn("proxy_get_configuration", 2, func(h *hc, a []uint64) Status { // ABI 0.1.0
			return h.giveBytes(h.in.p.cfg.Configuration, u32(a, 0), u32(a, 1))
		}),

		fn("proxy_get_header_map_size", 2, func(h *hc, a []uint64) Status {
			f, st := h.fields(u32(a, 0), false)
			if st != StatusOK {
				return st
			}
			return h.putU32(u32(a, 1), uint32(len(f.serialize())))
		}),
		fn("proxy_get_header_map_pairs", 3, func(h *hc, a []uint64) Status {
			f, st := h.fields(u32(a, 0), false)
			if st != StatusOK {
				return st
			}
			return h.giveBytes(f.serialize(), u32(a, 1), u32(a, 2))
		}),
		fn("proxy_set_header_map_pairs", 3, func(h *hc, a []uint64) Status {
			f, st := h.fields(u32(a, 0), true)
			if st != StatusOK {
				return st
			}
			data, ok := h.read(u32(a, 1), u32(a, 2))
			if !ok {
				return StatusInvalidMemoryAccess
			}
			nf, ok := parseFields(data)
			if !ok {
				return StatusBadArgument
			}
			for i := range nf {
				nf[i].key = strings.ToLower(nf[i].key)
			}
			*f = nf
			return StatusOK
		}),
		fn("proxy_get_header_map_value", 5, func(h *hc, a []uint64) Status {
			f, st := h.fields(u32(a, 0), false)
			if st != StatusOK {
				return st
			}
			key, ok := h.read(u32(a, 1), u32(a, 2))
			if !ok {
				return StatusInvalidMemoryAccess
			}
			v, found := f.get(strings.ToLower(string(key)))
			if !found {
				return StatusNotFound
			}
			return h.giveBytes([]byte(v), u32(a, 3), u32(a, 4))
		}),
		fn("proxy_add_header_map_value", 5, func(h *hc, a []uint64) Status {
			return h.editField(a, func(f *fields, k, v string) { f.add(k, v) })
		}),
		fn("proxy_replace_header_map_value", 5, func(h *hc, a []uint64) Status {
			return h.editField(a, func(f *fields, k, v string) { f.replace(k, v) })
		}),
		fn("proxy_remove_header_map_value", 3, func(h *hc, a []uint64) Status {
			f, st := h.fields(u32(a, 0), true)
			if st != StatusOK {
				return st
			}
			key, ok := h.read(u32(a, 1), u32(a, 2))
			if !ok {
				return StatusInvalidMemoryAccess
			}
			f.remove(strings.ToLower(string(key)))
			return StatusOK
		}),

		fn("proxy_send_local_response", 8, func(h *hc, a []uint64) Status {
			details, ok1 := h.read(u32(a, 1), u32(a, 2))
			body, ok2 := h.read(u32(a, 3), u32(a, 4))
			hdrs, ok3 := h.read(u32(a, 5), u32(a, 6))
			if !ok1 || !ok2 || !ok3 {
				return StatusInvalidMemoryAccess
			}
			s := h.in.cur
			if s == nil {
				return StatusNotFound
			}
			code := u32(a, 0)
			if code < 100 || code > 999 {
				return StatusBadArgument
			}
			f, ok := parseFields(hdrs)
			if !ok {
				return StatusBadArgument
			}
			if s.respStarted {
				return StatusBadArgument // the response is already on its way downstream
			}
			s.local = &localResponse{code: int(code), details: string(details), body: body, headers: f}
			s.resume() // a stream paused earlier ends with this response
			return StatusOK
		}),
		fn("proxy_continue_stream", 1, func(h *hc, a []uint64) Status {
			return h.continueStream(u32(a, 0))
		}),
		fn("proxy_continue_request", 0, func(h *hc, _ []uint64) Status { return h.continueStream(streamRequest) }),
		fn("proxy_continue_response", 0, func(h *hc, _ []uint64) Status { return h.continueStream(streamResponse) }),
		fn("proxy_close_stream", 1, func(h *hc, a []uint64) Status {
			t := u32(a, 0)
			switch {
			case t > streamUpstream:
				return StatusBadArgument
			case t > streamResponse:
				return StatusUnimplemented // no TCP streams here
			case h.in.cur == nil:
				return StatusNotFound
			}
			h.in.cur.reset = true
			h.in.cur.resume()
			return StatusOK
		}),
		// This host has no route cache, so there is nothing to clear; success is truthful.
		fn("proxy_clear_route_cache", 0, func(*hc, []uint64) Status { return StatusOK }),

		fn("proxy_get_shared_data", 5, func(h *hc, a []uint64) Status {
			key, ok := h.read(u32(a, 0), u32(a, 1))
			if !ok || !h.writable(u32(a, 4), 4) {
				return StatusInvalidMemoryAccess
			}
			v, cas, found := h.in.p.shared.get(string(key))
			if !found {
				return StatusNotFound
			}
			if st := h.giveBytes(v, u32(a, 2), u32(a, 3)); st != StatusOK {
				return st
			}
			return h.putU32(u32(a, 4), cas)
		}),
		fn("proxy_set_shared_data", 5, func(h *hc, a []uint64) Status {
			key, ok1 := h.read(u32(a, 0), u32(a, 1))
			v, ok2 := h.read(u32(a, 2), u32(a, 3))
			if !ok1 || !ok2 {
				return StatusInvalidMemoryAccess
			}
			return h.in.p.shared.set(string(key), v, u32(a, 4))
		}),
		fn("proxy_register_shared_queue", 3, func(h *hc, a []uint64) Status {
			name, ok := h.read(u32(a, 0), u32(a, 1))
			if !ok || !h.writable(u32(a, 2), 4) {
				return StatusInvalidMemoryAccess
			}
			id := registerQueue(h.in.p.shared, string(name), h.in)
			return h.putU32(u32(a, 2), id)
		}),
		fn("proxy_resolve_shared_queue", 5, func(h *hc, a []uint64) Status {
			vm, ok1 := h.read(u32(a, 0), u32(a, 1))
			name, ok2 := h.read(u32(a, 2), u32(a, 3))
			if !ok1 || !ok2 || !h.writable(u32(a, 4), 4) {
				return StatusInvalidMemoryAccess
			}
			key := h.in.p.shared.key
			if len(vm) > 0 {
				key = string(vm)
			}
			id, found := resolveQueue(key, string(name))
			if !found {
				return StatusNotFound
			}
			return h.putU32(u32(a, 4), id)
		}),
		fn("proxy_enqueue_shared_queue", 3, func(h *hc, a []uint64) Status {
			v, ok := h.read(u32(a, 1), u32(a, 2))
			if !ok {
				return StatusInvalidMemoryAccess
			}
			return enqueue(u32(a, 0), v)
		}),
		fn("proxy_dequeue_shared_queue", 3, func(h *hc, a []uint64) Status {
			if !h.writable(u32(a, 1), 4) || !h.writable(u32(a, 2), 4) {
				return StatusInvalidMemoryAccess
			}
			v, st := dequeue(u32(a, 0))
			if st != StatusOK {
				return st
			}
			return h.giveBytes(v, u32(a, 1), u32(a, 2))
		}),

		fn("proxy_define_metric", 4, func(h *hc, a []uint64) Status {
			name, ok := h.read(u32(a, 1), u32(a, 2))
			if !ok || !h.writable(u32(a, 3), 4) {
				return StatusInvalidMemoryAccess
			}
			id, st := h.in.p.metrics.define(u32(a, 0), string(name))
			if st != StatusOK {
				return st
			}
			return h.putU32(u32(a, 3), id)
		}),
		{name: "proxy_increment_metric", params: []api.ValueType{i32, i64}, results: []api.ValueType{i32},
			fn: func(h *hc, a []uint64) Status { return h.in.p.metrics.increment(u32(a, 0), int64(a[1])) }},
		{name: "proxy_record_metric", params: []api.ValueType{i32, i64}, results: []api.ValueType{i32},
			fn: func(h *hc, a []uint64) Status { return h.in.p.metrics.record(u32(a, 0), a[1]) }},
		fn("proxy_get_metric", 2, func(h *hc, a []uint64) Status {
			if !h.writable(u32(a, 1), 8) {
				return StatusInvalidMemoryAccess
			}
			v, st := h.in.p.metrics.get(u32(a, 0))
			if st != StatusOK {
				return st
			}
			h.mem.WriteUint64Le(u32(a, 1), v)
			return StatusOK
		}),

		fn("proxy_get_property", 4, func(h *hc, a []uint64) Status {
			path, ok := h.read(u32(a, 0), u32(a, 1))
			if !ok || !h.writable(u32(a, 2), 4) || !h.writable(u32(a, 3), 4) {
				return StatusInvalidMemoryAccess
			}
			v, st := h.property(splitPath(path))
			if st != StatusOK {
				return st
			}
			return h.giveBytes(v, u32(a, 2), u32(a, 3))
		}),
		fn("proxy_set_property", 4, func(h *hc, a []uint64) Status {
			path, ok1 := h.read(u32(a, 0), u32(a, 1))
			v, ok2 := h.read(u32(a, 2), u32(a, 3))
			if !ok1 || !ok2 {
				return StatusInvalidMemoryAccess
			}
			return h.setProperty(splitPath(path), v)
		}),

		fn("proxy_set_effective_context", 1, func(h *hc, a []uint64) Status {
			id := u32(a, 0)
			if id == h.in.root {
				h.in.active, h.in.cur = id, nil
				return StatusOK
			}
			s, ok := h.in.streams[id]
			if !ok {
				return StatusBadArgument
			}
			h.in.active, h.in.cur = id, s
			return StatusOK
		}),
		fn("proxy_done", 0, func(h *hc, _ []uint64) Status {
			if s := h.in.cur; s != nil && s.donePending {
				s.donePending = false
				return StatusOK
			}
			return StatusNotFound
		}),
		// No foreign functions are registered in this host.
		fn("proxy_call_foreign_function", 6, func(h *hc, a []uint64) Status {
			if _, ok := h.read(u32(a, 0), u32(a, 1)); !ok {
				return StatusInvalidMemoryAccess
			}
			if _, ok := h.read(u32(a, 2), u32(a, 3)); !ok {
				return StatusInvalidMemoryAccess
			}
			return StatusNotFound
		}),

		unimplemented("proxy_http_call", 10),
		unimplemented("proxy_get_status", 3),
		unimplemented("proxy_grpc_call", 12),
		unimplemented("proxy_grpc_stream", 9),
		unimplemented("proxy_grpc_send", 4),
		unimplemented("proxy_grpc_cancel", 1),
		unimplemented("proxy_grpc_close", 1),

		// AssemblyScript runtime imports, so filters written with its SDK load.
		{name: "abort", params: i32s(4), fn: func(h *hc, a []uint64) Status {
			panic(fmt.Errorf("the module called abort (line %d, column %d)", u32(a, 2), u32(a, 3)))
		}},
		{name: "seed", results: []api.ValueType{api.ValueTypeF64}, fn: func(h *hc, a []uint64) Status {
			var b [8]byte
			_, _ = rand.Read(b[:])
			a[0] = api.EncodeF64(float64(binary.LittleEndian.Uint64(b[:])>>11) / (1 << 53))
			return StatusOK
		}},
	}
}

// buffer returns the buffer the ABI names bt, as visible from the active context.
func (h *hc) buffer(bt uint32) (*[]byte, Status) {
	s := h.in.cur
	switch bt {
	case bufRequestBody:
		if s != nil && s.reqBody != nil {
			return &s.reqBody.data, StatusOK
		}
	case bufResponseBody:
		if s != nil && s.respBody != nil {
			return &s.respBody.data, StatusOK
		}
	case bufVMConfiguration:
		b := h.in.p.cfg.VMConfiguration
		return &b, StatusOK
	case bufPluginConfiguration:
		b := h.in.p.cfg.Configuration
		return &b, StatusOK
	case bufDownstreamData, bufUpstreamData, bufHTTPCallResponse, bufGrpcMessage, bufForeignArguments:
	default:
		return nil, StatusBadArgument
	}
	return nil, StatusNotFound
}

// fields returns the header map the ABI names mt, as visible from the active context. Maps
// already sent on (request headers once forwarded, response headers once written) are
// read-only: a change could no longer take effect, so it is refused rather than lost.
func (h *hc) fields(mt uint32, write bool) (*fields, Status) {
	if mt > mapHTTPCallResponseTrailer {
		return nil, StatusBadArgument
	}
	s := h.in.cur
	if s == nil {
		return nil, StatusNotFound
	}
	var m *fieldMap
	switch mt {
	case mapRequestHeaders:
		m = s.reqHeaders
	case mapRequestTrailers:
		m = s.reqTrailers
	case mapResponseHeaders:
		m = s.respHeaders
	case mapResponseTrailers:
		m = s.respTrailers
	}
	if m == nil {
		return nil, StatusNotFound
	}
	if write && m.sealed {
		return nil, StatusBadArgument
	}
	return &m.f, StatusOK
}

func (h *hc) editField(a []uint64, edit func(f *fields, k, v string)) Status {
	f, st := h.fields(u32(a, 0), true)
	if st != StatusOK {
		return st
	}
	key, ok1 := h.read(u32(a, 1), u32(a, 2))
	val, ok2 := h.read(u32(a, 3), u32(a, 4))
	if !ok1 || !ok2 {
		return StatusInvalidMemoryAccess
	}
	edit(f, strings.ToLower(string(key)), string(val))
	return StatusOK
}

func (h *hc) continueStream(t uint32) Status {
	switch {
	case t > streamUpstream:
		return StatusBadArgument
	case t > streamResponse:
		return StatusUnimplemented
	case h.in.cur == nil:
		return StatusNotFound
	}
	h.in.cur.resume()
	return StatusOK
}
