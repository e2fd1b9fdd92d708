package wasmhost

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"slices"
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
	// Envoy prefers malloc over proxy_on_memory_allocate (src/wasm.cc, getFunctions).
	f := h.in.fn("malloc")
	if f == nil {
		f = h.in.fn("proxy_on_memory_allocate")
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

// hostFuncs is the env module: the proxy-wasm ABI by area, then the helpers Envoy adds.
func hostFuncs() []hostFunc {
	return slices.Concat(
		logFuncs(),
		bufferFuncs(),
		headerMapFuncs(),
		streamFuncs(),
		sharedFuncs(),
		metricFuncs(),
		propertyFuncs(),
		contextFuncs(),
		callFuncs(),
		emscriptenFuncs(),
	)
}

// logFuncs are the host functions of logging, time and the tick timer.
func logFuncs() []hostFunc {
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
	}
}

// bufferFuncs are the host functions of buffers: bodies, the plugin configuration.
func bufferFuncs() []hostFunc {
	return []hostFunc{
		fn("proxy_get_buffer_bytes", 5, func(h *hc, a []uint64) Status {
			buf, st := h.buffer(u32(a, 0))
			if st != StatusOK {
				return st
			}
			// A start past the end reads nothing, and nothing is handed back as a null
			// pointer and zero size (exports.cc get_buffer_bytes, since cpp-host #303).
			n := uint64(len(buf.data))
			start := min(uint64(u32(a, 1)), n)
			end := min(start+uint64(u32(a, 2)), n)
			return h.giveBytes(buf.data[start:end], u32(a, 3), u32(a, 4))
		}),
		fn("proxy_set_buffer_bytes", 5, func(h *hc, a []uint64) Status {
			buf, st := h.buffer(u32(a, 0))
			if st != StatusOK {
				return st
			}
			data, ok := h.read(u32(a, 3), u32(a, 4))
			if !ok {
				return StatusInvalidMemoryAccess
			}
			return buf.set(u32(a, 1), u32(a, 2), data)
		}),
		fn("proxy_get_buffer_status", 3, func(h *hc, a []uint64) Status {
			buf, st := h.buffer(u32(a, 0))
			if st != StatusOK {
				return st
			}
			if !h.writable(u32(a, 2), 4) {
				return StatusInvalidMemoryAccess
			}
			if st := h.putU32(u32(a, 1), uint32(len(buf.data))); st != StatusOK {
				return st
			}
			return h.putU32(u32(a, 2), 0)
		}),
		fn("proxy_get_configuration", 2, func(h *hc, a []uint64) Status { // ABI 0.1.0
			return h.giveBytes(h.in.p.cfg.Configuration, u32(a, 0), u32(a, 1))
		}),
	}
}

// headerMapFuncs are the host functions of header and trailer maps.
func headerMapFuncs() []hostFunc {
	return []hostFunc{
		fn("proxy_get_header_map_size", 2, func(h *hc, a []uint64) Status {
			f, st := h.fields(u32(a, 0))
			if st != StatusOK {
				return st
			}
			return h.putU32(u32(a, 1), uint32(f.byteSize()))
		}),
		fn("proxy_get_header_map_pairs", 3, func(h *hc, a []uint64) Status {
			// An unavailable map reads as empty, not as an error (context.cc getHeaderMapPairs).
			if u32(a, 0) > mapHTTPCallResponseTrailer {
				return StatusBadArgument
			}
			var data []byte
			if f, st := h.fields(u32(a, 0)); st == StatusOK && len(*f) > 0 {
				data = f.serialize()
			}
			return h.giveBytes(data, u32(a, 1), u32(a, 2))
		}),
		fn("proxy_set_header_map_pairs", 3, func(h *hc, a []uint64) Status {
			if u32(a, 0) > mapHTTPCallResponseTrailer {
				return StatusBadArgument
			}
			data, ok := h.read(u32(a, 1), u32(a, 2))
			if !ok {
				return StatusInvalidMemoryAccess
			}
			f, st := h.fields(u32(a, 0))
			if st != StatusOK {
				return st
			}
			nf, _ := parseFields(data) // malformed pairs read as none, as Envoy's toPairs does
			for i := range nf {
				nf[i].key = strings.ToLower(nf[i].key)
			}
			*f = nf
			return StatusOK
		}),
		fn("proxy_get_header_map_value", 5, func(h *hc, a []uint64) Status {
			if u32(a, 0) > mapHTTPCallResponseTrailer {
				return StatusBadArgument
			}
			key, ok := h.read(u32(a, 1), u32(a, 2))
			if !ok {
				return StatusInvalidMemoryAccess
			}
			f, st := h.fields(u32(a, 0))
			if st != StatusOK {
				return st
			}
			v, found := f.get(strings.ToLower(string(key)))
			if !found {
				if h.in.p.abi == "proxy_abi_version_0_1_0" {
					v = "" // ABI 0.1.0 reads a missing header as empty (context.cc getHeaderMapValue)
				} else {
					return StatusNotFound
				}
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
			if u32(a, 0) > mapHTTPCallResponseTrailer {
				return StatusBadArgument
			}
			key, ok := h.read(u32(a, 1), u32(a, 2))
			if !ok {
				return StatusInvalidMemoryAccess
			}
			f, st := h.fields(u32(a, 0))
			if st != StatusOK {
				return st
			}
			f.remove(strings.ToLower(string(key)))
			return StatusOK
		}),
	}
}

// streamFuncs are the host functions of stream control: local responses, continuing and closing streams.
func streamFuncs() []hostFunc {
	return []hostFunc{
		fn("proxy_send_local_response", 8, func(h *hc, a []uint64) Status {
			details, ok1 := h.read(u32(a, 1), u32(a, 2))
			body, ok2 := h.read(u32(a, 3), u32(a, 4))
			hdrs, ok3 := h.read(u32(a, 5), u32(a, 6))
			if !ok1 || !ok2 || !ok3 {
				return StatusInvalidMemoryAccess
			}
			code := u32(a, 0)
			if code < 100 || code > 999 {
				return StatusBadArgument // not an HTTP status line this host can write
			}
			s := h.in.cur
			if s == nil {
				return StatusOK // Envoy: no stream to answer from the root context, and OK
			}
			f, _ := parseFields(hdrs) // malformed pairs add no headers (pairs_util.cc toPairs)
			for i := range f {
				f[i].key = strings.ToLower(f[i].key)
			}
			if s.respStarted {
				s.reset = true // too late for a reply: Envoy resets the stream
			} else {
				s.local = &localResponse{code: int(code), details: string(details), body: body, headers: f}
			}
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
			case t > streamResponse || h.in.cur == nil:
				return StatusOK // nothing to close: no TCP stream, or the root context
			}
			h.in.cur.reset = true
			h.in.cur.resume()
			return StatusOK
		}),
		// This host has no route cache, so there is nothing to clear; success is truthful.
		fn("proxy_clear_route_cache", 0, func(*hc, []uint64) Status { return StatusOK }),
	}
}

// sharedFuncs are the host functions of shared data and shared queues, across the VMs of one vm_id.
func sharedFuncs() []hostFunc {
	return []hostFunc{
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
	}
}

// metricFuncs are the host functions of metrics.
func metricFuncs() []hostFunc {
	return []hostFunc{
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
	}
}

// propertyFuncs are the host functions of properties.
func propertyFuncs() []hostFunc {
	return []hostFunc{
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
	}
}

// contextFuncs are the host functions of contexts and foreign functions.
func contextFuncs() []hostFunc {
	return []hostFunc{
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
		// proxy_done ends a root context's delayed shutdown (src/wasm.cc, WasmBase::done);
		// this host shuts a VM down at once, so nothing is ever pending.
		fn("proxy_done", 0, func(h *hc, _ []uint64) Status { return StatusNotFound }),
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
	}
}

// callFuncs are the host functions of outbound HTTP and gRPC calls, none of which this host can make.
func callFuncs() []hostFunc {
	return []hostFunc{
		// No upstream clusters exist here: Envoy answers BAD_ARGUMENT for an unknown cluster,
		// after checking the arguments and writing the token (exports.cc http_call,
		// context.cc Context::httpCall).
		fn("proxy_http_call", 10, func(h *hc, a []uint64) Status {
			for i := 0; i < 8; i += 2 {
				if _, ok := h.read(u32(a, i), u32(a, i+1)); !ok {
					return StatusInvalidMemoryAccess
				}
			}
			if st := h.putU32(u32(a, 9), 0); st != StatusOK {
				return st
			}
			return StatusBadArgument
		}),
		// The status of the last HTTP or gRPC call: there are none, so code 0 and no message.
		fn("proxy_get_status", 3, func(h *hc, a []uint64) Status {
			if st := h.putU32(u32(a, 0), 0); st != StatusOK {
				return st
			}
			return h.giveBytes(nil, u32(a, 1), u32(a, 2))
		}),
		unimplemented("proxy_grpc_call", 12),
		unimplemented("proxy_grpc_stream", 9),
		unimplemented("proxy_grpc_send", 4),
		unimplemented("proxy_grpc_cancel", 1),
		unimplemented("proxy_grpc_close", 1),
	}
}

// emscriptenFuncs are the host functions of the Emscripten helpers Envoy registers in env (src/wasm.cc registerCallbacks).
func emscriptenFuncs() []hostFunc {
	return []hostFunc{
		{name: "pthread_equal", params: i32s(2), results: []api.ValueType{i32}, fn: func(h *hc, a []uint64) Status {
			if u32(a, 0) == u32(a, 1) {
				return 1
			}
			return 0
		}},
		{name: "emscripten_notify_memory_growth", params: i32s(1), fn: func(*hc, []uint64) Status { return StatusOK }},
	}
}

// buffer returns the buffer the ABI names bt, as Envoy's Context::getBuffer does: a body is
// readable from any context and empty outside its own callback (writable only inside it), the
// plugin configuration exists only in proxy_on_configure and the root context's
// proxy_on_context_create, an HTTP call response only in its callback (never, here).
func (h *hc) buffer(bt uint32) (*bodyBuf, Status) {
	s := h.in.cur
	switch bt {
	case bufRequestBody:
		if s != nil && s.reqBody != nil {
			return s.reqBody, StatusOK
		}
		return &bodyBuf{readOnly: true}, StatusOK
	case bufResponseBody:
		if s != nil && s.respBody != nil {
			return s.respBody, StatusOK
		}
		return &bodyBuf{readOnly: true}, StatusOK
	case bufVMConfiguration:
		return &bodyBuf{data: h.in.p.cfg.VMConfiguration, readOnly: true}, StatusOK
	case bufPluginConfiguration:
		if h.in.calling == "proxy_on_configure" || (h.in.calling == "proxy_on_context_create" && s == nil) {
			return &bodyBuf{data: h.in.p.cfg.Configuration, readOnly: true}, StatusOK
		}
		return nil, StatusNotFound
	case bufDownstreamData, bufUpstreamData, bufGrpcMessage, bufForeignArguments:
		return &bodyBuf{readOnly: true}, StatusOK
	case bufHTTPCallResponse:
		return nil, StatusNotFound
	}
	return nil, StatusBadArgument
}

// set edits a body the way Envoy's Buffer::copyFrom allows: prepend (start 0, length 0),
// replace all (start 0, length >= size), append (start >= size); anything else, and any
// read-only buffer, is BAD_ARGUMENT.
func (b *bodyBuf) set(start, length uint32, data []byte) Status {
	n := uint64(len(b.data))
	switch {
	case b.readOnly:
		return StatusBadArgument
	case start == 0 && length == 0:
		b.data = append(data, b.data...)
	case start == 0 && uint64(length) >= n:
		b.data = data
	case uint64(start) >= n:
		b.data = append(b.data, data...)
	default:
		return StatusBadArgument
	}
	b.changed = true
	return StatusOK
}

// fields returns the header map the ABI names mt, as visible from the active context. As in
// Envoy (context.cc getMap, decodeHeaders/encodeHeaders), a map is there only during its own
// callback, or while the filter holds the stream paused in it: once passed on, it is
// unavailable (BAD_ARGUMENT), like every map from the root context.
func (h *hc) fields(mt uint32) (*fields, Status) {
	if mt > mapHTTPCallResponseTrailer {
		return nil, StatusBadArgument
	}
	s := h.in.cur
	if s == nil {
		return nil, StatusBadArgument
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
	if m == nil || m.sealed {
		return nil, StatusBadArgument
	}
	return &m.f, StatusOK
}

func (h *hc) editField(a []uint64, edit func(f *fields, k, v string)) Status {
	if u32(a, 0) > mapHTTPCallResponseTrailer {
		return StatusBadArgument
	}
	key, ok1 := h.read(u32(a, 1), u32(a, 2))
	val, ok2 := h.read(u32(a, 3), u32(a, 4))
	if !ok1 || !ok2 {
		return StatusInvalidMemoryAccess
	}
	f, st := h.fields(u32(a, 0))
	if st != StatusOK {
		return st
	}
	edit(f, strings.ToLower(string(key)), string(val))
	return StatusOK
}

// continueStream follows Envoy's Context::continueStream: OK for the request, the response
// and the downstream (a no-op without a paused stream), UNIMPLEMENTED for the upstream.
func (h *hc) continueStream(t uint32) Status {
	switch {
	case t > streamUpstream:
		return StatusBadArgument
	case t == streamUpstream:
		return StatusUnimplemented
	case t > streamResponse || h.in.cur == nil:
		return StatusOK
	}
	h.in.cur.resume()
	return StatusOK
}
