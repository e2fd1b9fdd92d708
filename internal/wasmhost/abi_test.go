package wasmhost

import (
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

// probeOps lists the host functions in the order of the probe's probe_hostcall table.
var probeOps = []string{
	"proxy_log", "proxy_get_log_level", "proxy_get_current_time_nanoseconds",
	"proxy_set_tick_period_milliseconds", "proxy_get_buffer_bytes", "proxy_set_buffer_bytes",
	"proxy_get_buffer_status", "proxy_get_header_map_size", "proxy_get_header_map_pairs",
	"proxy_set_header_map_pairs", "proxy_get_header_map_value", "proxy_add_header_map_value",
	"proxy_replace_header_map_value", "proxy_remove_header_map_value", "proxy_send_local_response",
	"proxy_continue_stream", "proxy_close_stream", "proxy_get_shared_data", "proxy_set_shared_data",
	"proxy_register_shared_queue", "proxy_resolve_shared_queue", "proxy_enqueue_shared_queue",
	"proxy_dequeue_shared_queue", "proxy_get_property", "proxy_set_property", "proxy_http_call",
	"proxy_set_effective_context", "proxy_done", "proxy_define_metric", "proxy_increment_metric",
	"proxy_get_metric", "proxy_call_foreign_function",
}

const bad = 0xfffffff0 // outside any guest memory

// abiEnv drives host functions through the probe with raw arguments, inside a stream context
// for GET /x?y=1 with a request body.
type abiEnv struct {
	t   testing.TB
	p   *Plugin
	in  *instance
	s   *stream
	ret uint32 // 16 bytes: data pointer, size, cas

	inRoot bool // call from the root context instead of the stream
}

func newABIEnv(t testing.TB) *abiEnv {
	p, _ := newPlugin(t, PluginConfig{
		Module: probe(t), Name: "probe-plugin", RootID: "probe-root", VMID: "vm-" + t.Name(),
		Configuration: []byte("hello config"), VMConfiguration: []byte("vm config"), LogLevel: LogDebug, PoolSize: 1,
	})
	in, err := p.acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(in.mu.Unlock)
	req := httptest.NewRequest("GET", "/x?y=1", strings.NewReader("body"))
	req.Header.Set("User-Agent", "abi-test")
	s := &stream{id: 99, in: in, p: p, req: req, start: time.Now(), resumeCh: make(chan struct{}, 1),
		reqHeaders: &fieldMap{f: requestFields(req)}, reqBody: &bodyBuf{data: []byte("body")}}
	in.streams[s.id] = s
	in.active, in.cur = s.id, s
	e := &abiEnv{t: t, p: p, in: in, s: s}
	e.ret = e.put(make([]byte, 16))
	return e
}

func (e *abiEnv) put(b []byte) uint32 {
	e.t.Helper()
	addr, err := e.in.call(context.Background(), time.Second, "proxy_on_memory_allocate", uint64(len(b)))
	if err != nil || uint32(addr) == 0 {
		e.t.Fatalf("allocate: %v", err)
	}
	if !e.in.mod.Memory().Write(uint32(addr), b) {
		e.t.Fatal("write")
	}
	return uint32(addr)
}

func (e *abiEnv) str(s string) (uint32, uint32) { return e.put([]byte(s)), uint32(len(s)) }

func (e *abiEnv) call(op string, args ...uint32) (Status, error) {
	i := slices.Index(probeOps, op)
	if i < 0 {
		e.t.Fatalf("unknown op %s", op)
	}
	a := []uint64{uint64(i)}
	for _, x := range args {
		a = append(a, uint64(x))
	}
	e.in.active, e.in.cur = e.s.id, e.s
	if e.inRoot {
		e.in.active, e.in.cur = e.in.root, nil
	}
	r, err := e.in.call(context.Background(), time.Second, "probe_hostcall", a...)
	return Status(uint32(r)), err
}

func (e *abiEnv) u32(addr uint32) uint32 {
	v, _ := e.in.mod.Memory().ReadUint32Le(addr)
	return v
}

func (e *abiEnv) put32(addr, v uint32) { e.in.mod.Memory().WriteUint32Le(addr, v) }

// poison fills the data and size return slots, so a test sees whether the host wrote them.
func (e *abiEnv) poison() {
	e.put32(e.ret, 0xdeadbeef)
	e.put32(e.ret+4, 0xdeadbeef)
}

// wantNull: the host wrote a null pointer and size 0, as Envoy's copyToPointerSize does for
// an empty value (include/proxy-wasm/wasm.h).
func wantNull(t *testing.T, e *abiEnv) {
	if p, n := e.u32(e.ret), e.u32(e.ret+4); p != 0 || n != 0 {
		t.Errorf("returned pointer %#x size %#x, want 0 and 0", p, n)
	}
}

// wantHeadersCleared: malformed pairs are read as none (pairs_util.cc toPairs), so setting
// them empties the map.
func wantHeadersCleared(t *testing.T, e *abiEnv) {
	if len(e.s.reqHeaders.f) != 0 {
		t.Errorf("headers %v, want none", e.s.reqHeaders.f)
	}
}

// returned is what the host handed back through the data and size return pointers.
func (e *abiEnv) returned() []byte {
	b, ok := e.in.mod.Memory().Read(e.u32(e.ret), e.u32(e.ret+4))
	if !ok {
		e.t.Fatal("returned pointer out of bounds")
	}
	return slices.Clone(b)
}

func TestHostFunctionConformance(t *testing.T) {
	type row struct {
		name  string
		op    string
		args  func(e *abiEnv) []uint32
		want  Status
		check func(t *testing.T, e *abiEnv)
	}
	args := func(f func(e *abiEnv) []uint32) func(e *abiEnv) []uint32 { return f }
	wantReturned := func(want string) func(t *testing.T, e *abiEnv) {
		return func(t *testing.T, e *abiEnv) {
			if got := string(e.returned()); got != want {
				t.Errorf("returned %q, want %q", got, want)
			}
		}
	}
	prop := func(path ...string) func(e *abiEnv) []uint32 {
		return func(e *abiEnv) []uint32 {
			p, n := e.str(strings.Join(path, "\x00"))
			return []uint32{p, n, e.ret, e.ret + 4}
		}
	}
	hdr := func(mt uint32, key string) func(e *abiEnv) []uint32 {
		return func(e *abiEnv) []uint32 {
			k, kn := e.str(key)
			return []uint32{mt, k, kn, e.ret, e.ret + 4}
		}
	}
	kv := func(mt uint32, key, value string) func(e *abiEnv) []uint32 {
		return func(e *abiEnv) []uint32 {
			k, kn := e.str(key)
			v, vn := e.str(value)
			return []uint32{mt, k, kn, v, vn}
		}
	}
	rows := []row{
		// logging and time
		{"log info", "proxy_log", args(func(e *abiEnv) []uint32 { p, n := e.str("hi"); return []uint32{2, p, n} }), StatusOK, nil},
		{"log bad level", "proxy_log", args(func(e *abiEnv) []uint32 { p, n := e.str("hi"); return []uint32{9, p, n} }), StatusBadArgument, nil},
		{"log message out of bounds", "proxy_log", args(func(e *abiEnv) []uint32 { return []uint32{2, bad, 100} }), StatusInvalidMemoryAccess, nil},
		{"log size overflows", "proxy_log", args(func(e *abiEnv) []uint32 { p, _ := e.str("hi"); return []uint32{2, p, 0xffffffff} }), StatusInvalidMemoryAccess, nil},
		{"get log level", "proxy_get_log_level", args(func(e *abiEnv) []uint32 { return []uint32{e.ret} }), StatusOK,
			func(t *testing.T, e *abiEnv) {
				if e.u32(e.ret) != uint32(LogDebug) {
					t.Errorf("level %d", e.u32(e.ret))
				}
			}},
		{"get log level out of bounds", "proxy_get_log_level", args(func(e *abiEnv) []uint32 { return []uint32{bad} }), StatusInvalidMemoryAccess, nil},
		{"current time", "proxy_get_current_time_nanoseconds", args(func(e *abiEnv) []uint32 { return []uint32{e.ret} }), StatusOK,
			func(t *testing.T, e *abiEnv) {
				b, _ := e.in.mod.Memory().Read(e.ret, 8)
				got := time.Unix(0, int64(binary.LittleEndian.Uint64(b)))
				if got.Before(e.s.start) {
					t.Errorf("time %v before the stream started", got)
				}
			}},
		{"current time out of bounds", "proxy_get_current_time_nanoseconds", args(func(e *abiEnv) []uint32 { return []uint32{bad} }), StatusInvalidMemoryAccess, nil},

		// buffers: proxy-wasm-cpp-host src/exports.cc get_buffer_bytes/set_buffer_bytes/
		// get_buffer_status, Envoy source/extensions/common/wasm/context.cc Context::getBuffer
		// and Buffer::copyFrom.
		{"VM configuration, from any context", "proxy_get_buffer_bytes", args(func(e *abiEnv) []uint32 { return []uint32{bufVMConfiguration, 0, 100, e.ret, e.ret + 4} }), StatusOK, wantReturned("vm config")},
		{"VM configuration slice", "proxy_get_buffer_bytes", args(func(e *abiEnv) []uint32 { return []uint32{bufVMConfiguration, 3, 3, e.ret, e.ret + 4} }), StatusOK, wantReturned("con")},
		{"plugin configuration only in proxy_on_configure", "proxy_get_buffer_bytes", args(func(e *abiEnv) []uint32 { return []uint32{bufPluginConfiguration, 0, 100, e.ret, e.ret + 4} }), StatusNotFound, nil},
		{"request body", "proxy_get_buffer_bytes", args(func(e *abiEnv) []uint32 { return []uint32{bufRequestBody, 0, 100, e.ret, e.ret + 4} }), StatusOK, wantReturned("body")},
		{"start past the end reads nothing", "proxy_get_buffer_bytes", args(func(e *abiEnv) []uint32 { e.poison(); return []uint32{bufRequestBody, 5, 1, e.ret, e.ret + 4} }), StatusOK, wantNull},
		{"zero length writes a null pointer and size 0", "proxy_get_buffer_bytes", args(func(e *abiEnv) []uint32 { e.poison(); return []uint32{bufRequestBody, 0, 0, e.ret, e.ret + 4} }), StatusOK, wantNull},
		{"unknown buffer type", "proxy_get_buffer_bytes", args(func(e *abiEnv) []uint32 { return []uint32{99, 0, 1, e.ret, e.ret + 4} }), StatusBadArgument, nil},
		{"response body outside its callback is empty", "proxy_get_buffer_bytes", args(func(e *abiEnv) []uint32 { e.poison(); return []uint32{bufResponseBody, 0, 1, e.ret, e.ret + 4} }), StatusOK, wantNull},
		{"TCP data in HTTP is empty", "proxy_get_buffer_bytes", args(func(e *abiEnv) []uint32 { e.poison(); return []uint32{bufDownstreamData, 0, 1, e.ret, e.ret + 4} }), StatusOK, wantNull},
		{"no HTTP call response", "proxy_get_buffer_bytes", args(func(e *abiEnv) []uint32 { return []uint32{bufHTTPCallResponse, 0, 1, e.ret, e.ret + 4} }), StatusNotFound, nil},
		{"buffer return pointer out of bounds", "proxy_get_buffer_bytes", args(func(e *abiEnv) []uint32 { return []uint32{bufVMConfiguration, 0, 100, bad, e.ret + 4} }), StatusInvalidMemoryAccess, nil},
		{"replace body", "proxy_set_buffer_bytes", args(func(e *abiEnv) []uint32 { p, n := e.str("new"); return []uint32{bufRequestBody, 0, 0xffffffff, p, n} }), StatusOK,
			func(t *testing.T, e *abiEnv) {
				if string(e.s.reqBody.data) != "new" {
					t.Errorf("body %q", e.s.reqBody.data)
				}
			}},
		{"prepend and append", "proxy_set_buffer_bytes", args(func(e *abiEnv) []uint32 { p, n := e.str(">"); return []uint32{bufRequestBody, 0, 0, p, n} }), StatusOK,
			func(t *testing.T, e *abiEnv) {
				p, n := e.str("<")
				if st, err := e.call("proxy_set_buffer_bytes", bufRequestBody, 0xffffffff, 0, p, n); st != StatusOK || err != nil {
					t.Fatal(st, err)
				}
				if string(e.s.reqBody.data) != ">body<" {
					t.Errorf("body %q", e.s.reqBody.data)
				}
			}},
		{"edit inside the body", "proxy_set_buffer_bytes", args(func(e *abiEnv) []uint32 { p, n := e.str("x"); return []uint32{bufRequestBody, 1, 2, p, n} }), StatusBadArgument,
			func(t *testing.T, e *abiEnv) {
				if string(e.s.reqBody.data) != "body" {
					t.Errorf("body %q", e.s.reqBody.data)
				}
			}},
		{"configuration is read-only", "proxy_set_buffer_bytes", args(func(e *abiEnv) []uint32 { p, n := e.str("x"); return []uint32{bufVMConfiguration, 0, 0, p, n} }), StatusBadArgument, nil},
		{"response body outside its callback is read-only", "proxy_set_buffer_bytes", args(func(e *abiEnv) []uint32 { p, n := e.str("x"); return []uint32{bufResponseBody, 0, 0, p, n} }), StatusBadArgument, nil},
		{"set unknown buffer type", "proxy_set_buffer_bytes", args(func(e *abiEnv) []uint32 { p, n := e.str("x"); return []uint32{9, 0, 0, p, n} }), StatusBadArgument, nil},
		{"set body data out of bounds", "proxy_set_buffer_bytes", args(func(e *abiEnv) []uint32 { return []uint32{bufRequestBody, 0, 0, bad, 4} }), StatusInvalidMemoryAccess, nil},
		{"buffer status", "proxy_get_buffer_status", args(func(e *abiEnv) []uint32 { e.poison(); return []uint32{bufRequestBody, e.ret, e.ret + 4} }), StatusOK,
			func(t *testing.T, e *abiEnv) {
				if e.u32(e.ret) != 4 || e.u32(e.ret+4) != 0 {
					t.Errorf("size %d flags %d", e.u32(e.ret), e.u32(e.ret+4))
				}
			}},
		{"buffer status of no HTTP call", "proxy_get_buffer_status", args(func(e *abiEnv) []uint32 { return []uint32{bufHTTPCallResponse, e.ret, e.ret + 4} }), StatusNotFound, nil},
		{"buffer status bad type", "proxy_get_buffer_status", args(func(e *abiEnv) []uint32 { return []uint32{9, e.ret, e.ret + 4} }), StatusBadArgument, nil},
		{"buffer status out of bounds", "proxy_get_buffer_status", args(func(e *abiEnv) []uint32 { return []uint32{bufRequestBody, bad, e.ret} }), StatusInvalidMemoryAccess, nil},

		// header maps: exports.cc *_header_map_*, context.cc Context::getMap/getConstMap and
		// getHeaderMapValue/getHeaderMapPairs/getHeaderMapSize.
		{"get :method", "proxy_get_header_map_value", args(hdr(mapRequestHeaders, ":method")), StatusOK, wantReturned("GET")},
		{"get is case-insensitive", "proxy_get_header_map_value", args(hdr(mapRequestHeaders, "User-Agent")), StatusOK, wantReturned("abi-test")},
		{"missing header", "proxy_get_header_map_value", args(hdr(mapRequestHeaders, "x-nope")), StatusNotFound, nil},
		{"bad header map type", "proxy_get_header_map_value", args(hdr(99, ":method")), StatusBadArgument, nil},
		{"response headers not there yet", "proxy_get_header_map_value", args(hdr(mapResponseHeaders, ":status")), StatusBadArgument, nil},
		{"no gRPC metadata in HTTP", "proxy_get_header_map_value", args(hdr(mapGrpcInitialMetadata, "a")), StatusBadArgument, nil},
		{"request headers already passed on", "proxy_get_header_map_value", args(func(e *abiEnv) []uint32 { e.s.reqHeaders.sealed = true; return hdr(mapRequestHeaders, ":method")(e) }), StatusBadArgument, nil},
		{"header key out of bounds", "proxy_get_header_map_value", args(func(e *abiEnv) []uint32 { return []uint32{0, bad, 3, e.ret, e.ret + 4} }), StatusInvalidMemoryAccess, nil},
		{"header return out of bounds", "proxy_get_header_map_value", args(func(e *abiEnv) []uint32 { k, n := e.str(":method"); return []uint32{0, k, n, e.ret, bad} }), StatusInvalidMemoryAccess, nil},
		{"add header", "proxy_add_header_map_value", args(kv(mapRequestHeaders, "X-New", "1")), StatusOK,
			func(t *testing.T, e *abiEnv) {
				if v, _ := e.s.reqHeaders.f.get("x-new"); v != "1" {
					t.Errorf("x-new %q", v)
				}
			}},
		{"add to a bad map type", "proxy_add_header_map_value", args(kv(8, "a", "b")), StatusBadArgument, nil},
		{"add value out of bounds", "proxy_add_header_map_value", args(func(e *abiEnv) []uint32 { k, n := e.str("a"); return []uint32{0, k, n, bad, 2} }), StatusInvalidMemoryAccess, nil},
		{"replace header", "proxy_replace_header_map_value", args(kv(mapRequestHeaders, "user-agent", "other")), StatusOK,
			func(t *testing.T, e *abiEnv) {
				if v, _ := e.s.reqHeaders.f.get("user-agent"); v != "other" {
					t.Errorf("user-agent %q", v)
				}
			}},
		{"remove header", "proxy_remove_header_map_value", args(func(e *abiEnv) []uint32 { k, n := e.str("user-agent"); return []uint32{0, k, n} }), StatusOK,
			func(t *testing.T, e *abiEnv) {
				if _, ok := e.s.reqHeaders.f.get("user-agent"); ok {
					t.Error("still there")
				}
			}},
		{"add to a map already passed on", "proxy_add_header_map_value", args(func(e *abiEnv) []uint32 { e.s.reqHeaders.sealed = true; return kv(0, "a", "b")(e) }), StatusBadArgument, nil},
		{"add to response headers not there yet", "proxy_add_header_map_value", args(kv(mapResponseHeaders, "a", "b")), StatusBadArgument, nil},
		{"replace in a bad map type", "proxy_replace_header_map_value", args(kv(8, "a", "b")), StatusBadArgument, nil},
		{"replace in response trailers not there", "proxy_replace_header_map_value", args(kv(mapResponseTrailers, "a", "b")), StatusBadArgument, nil},
		{"replace adds a missing header", "proxy_replace_header_map_value", args(kv(mapRequestHeaders, "x-new", "v")), StatusOK,
			func(t *testing.T, e *abiEnv) {
				if v, _ := e.s.reqHeaders.f.get("x-new"); v != "v" {
					t.Errorf("x-new %q", v)
				}
			}},
		{"remove from a bad map type", "proxy_remove_header_map_value", args(func(e *abiEnv) []uint32 { k, n := e.str("a"); return []uint32{8, k, n} }), StatusBadArgument, nil},
		{"remove a missing header", "proxy_remove_header_map_value", args(func(e *abiEnv) []uint32 { k, n := e.str("x-nope"); return []uint32{0, k, n} }), StatusOK, nil},
		{"remove key out of bounds", "proxy_remove_header_map_value", args(func(e *abiEnv) []uint32 { return []uint32{0, bad, 3} }), StatusInvalidMemoryAccess, nil},
		{"pairs of an unavailable map are empty", "proxy_get_header_map_pairs", args(func(e *abiEnv) []uint32 { e.poison(); return []uint32{mapResponseHeaders, e.ret, e.ret + 4} }), StatusOK, wantNull},
		{"pairs of a bad map type", "proxy_get_header_map_pairs", args(func(e *abiEnv) []uint32 { return []uint32{8, e.ret, e.ret + 4} }), StatusBadArgument, nil},
		{"pairs out of bounds", "proxy_get_header_map_pairs", args(func(e *abiEnv) []uint32 { return []uint32{0, bad, e.ret} }), StatusInvalidMemoryAccess, nil},
		{"size of an unavailable map", "proxy_get_header_map_size", args(func(e *abiEnv) []uint32 { return []uint32{mapResponseHeaders, e.ret} }), StatusBadArgument, nil},
		{"size out of bounds", "proxy_get_header_map_size", args(func(e *abiEnv) []uint32 { return []uint32{0, bad} }), StatusInvalidMemoryAccess, nil},
		{"header pairs", "proxy_get_header_map_pairs", args(func(e *abiEnv) []uint32 { return []uint32{0, e.ret, e.ret + 4} }), StatusOK,
			func(t *testing.T, e *abiEnv) {
				f, ok := parseFields(e.returned())
				if !ok || !slices.Equal(f, e.s.reqHeaders.f) {
					t.Errorf("pairs %v, want %v", f, e.s.reqHeaders.f)
				}
			}},
		{"header map size", "proxy_get_header_map_size", args(func(e *abiEnv) []uint32 { return []uint32{0, e.ret} }), StatusOK,
			func(t *testing.T, e *abiEnv) {
				// HeaderMap::byteSize: the keys and values, without the serialization's framing.
				want := 0
				for _, p := range e.s.reqHeaders.f {
					want += len(p.key) + len(p.value)
				}
				if int(e.u32(e.ret)) != want || want == 0 {
					t.Errorf("size %d", e.u32(e.ret))
				}
			}},
		{"set pairs", "proxy_set_header_map_pairs", args(func(e *abiEnv) []uint32 {
			b := fields{{":method", "POST"}, {"A", "1"}}.serialize()
			return []uint32{0, e.put(b), uint32(len(b))}
		}), StatusOK, func(t *testing.T, e *abiEnv) {
			if !slices.Equal(e.s.reqHeaders.f, fields{{":method", "POST"}, {"a", "1"}}) {
				t.Errorf("headers %v", e.s.reqHeaders.f)
			}
		}},
		{"set pairs with lying lengths", "proxy_set_header_map_pairs", args(func(e *abiEnv) []uint32 {
			b := fields{{"a", "1"}}.serialize()
			binary.LittleEndian.PutUint32(b[4:], 1000)
			return []uint32{0, e.put(b), uint32(len(b))}
		}), StatusOK, wantHeadersCleared},
		{"set pairs with a huge count", "proxy_set_header_map_pairs", args(func(e *abiEnv) []uint32 {
			b := binary.LittleEndian.AppendUint32(nil, 0xffffffff)
			return []uint32{0, e.put(b), uint32(len(b))}
		}), StatusOK, wantHeadersCleared},
		{"set pairs without NUL terminators", "proxy_set_header_map_pairs", args(func(e *abiEnv) []uint32 {
			b := fields{{"a", "1"}}.serialize()
			b[len(b)-1] = 'x'
			return []uint32{0, e.put(b), uint32(len(b))}
		}), StatusOK, wantHeadersCleared},
		{"set pairs on a bad map type", "proxy_set_header_map_pairs", args(func(e *abiEnv) []uint32 { return []uint32{8, 0, 0} }), StatusBadArgument, nil},
		{"set pairs on an unavailable map", "proxy_set_header_map_pairs", args(func(e *abiEnv) []uint32 { return []uint32{mapResponseHeaders, 0, 0} }), StatusBadArgument, nil},
		{"set pairs out of bounds", "proxy_set_header_map_pairs", args(func(e *abiEnv) []uint32 { return []uint32{0, bad, 8} }), StatusInvalidMemoryAccess, nil},

		// local response and stream control
		{"local response", "proxy_send_local_response", args(func(e *abiEnv) []uint32 {
			d, dn := e.str("denied")
			b, bn := e.str("no")
			h := fields{{"x-why", "test"}}.serialize()
			return []uint32{403, d, dn, b, bn, e.put(h), uint32(len(h)), 0xffffffff}
		}), StatusOK, func(t *testing.T, e *abiEnv) {
			l := e.s.local
			if l == nil || l.code != 403 || string(l.body) != "no" || l.details != "denied" || !slices.Equal(l.headers, fields{{"x-why", "test"}}) {
				t.Errorf("local response %+v", l)
			}
		}},
		{"local response bad code", "proxy_send_local_response", args(func(e *abiEnv) []uint32 { return []uint32{42, 0, 0, 0, 0, 0, 0, 0} }), StatusBadArgument, nil},
		{"local response body out of bounds", "proxy_send_local_response", args(func(e *abiEnv) []uint32 { return []uint32{403, 0, 0, bad, 10, 0, 0, 0} }), StatusInvalidMemoryAccess, nil},
		{"local response from the root context", "proxy_send_local_response", args(func(e *abiEnv) []uint32 {
			e.inRoot = true
			return []uint32{403, 0, 0, 0, 0, 0, 0, 0}
		}), StatusOK, func(t *testing.T, e *abiEnv) {
			if e.s.local != nil {
				t.Error("the stream got a local response from the root context")
			}
		}},
		{"local response with malformed headers adds none", "proxy_send_local_response", args(func(e *abiEnv) []uint32 {
			h := e.put([]byte("\x05\x00\x00\x00garbage"))
			return []uint32{401, 0, 0, 0, 0, h, 11, 0xffffffff}
		}), StatusOK, func(t *testing.T, e *abiEnv) {
			if l := e.s.local; l == nil || l.code != 401 || len(l.headers) != 0 {
				t.Errorf("local response %+v", l)
			}
		}},
		{"local response after the response started resets", "proxy_send_local_response", args(func(e *abiEnv) []uint32 {
			e.s.respStarted = true
			return []uint32{403, 0, 0, 0, 0, 0, 0, 0}
		}), StatusOK, func(t *testing.T, e *abiEnv) {
			if !e.s.reset || e.s.local != nil {
				t.Errorf("reset %v local %+v", e.s.reset, e.s.local)
			}
		}},
		{"headers from the root context", "proxy_get_header_map_value", args(func(e *abiEnv) []uint32 {
			e.inRoot = true
			return hdr(mapRequestHeaders, ":method")(e)
		}), StatusBadArgument, nil},
		{"request property from the root context", "proxy_get_property", args(func(e *abiEnv) []uint32 {
			e.inRoot = true
			return prop("request", "path")(e)
		}), StatusNotFound, nil},
		{"continue request", "proxy_continue_stream", args(func(e *abiEnv) []uint32 { return []uint32{streamRequest} }), StatusOK, nil},
		{"continue upstream", "proxy_continue_stream", args(func(e *abiEnv) []uint32 { return []uint32{streamUpstream} }), StatusUnimplemented, nil},
		{"continue downstream", "proxy_continue_stream", args(func(e *abiEnv) []uint32 { return []uint32{2} }), StatusOK, nil},
		{"continue from the root context", "proxy_continue_stream", args(func(e *abiEnv) []uint32 { e.inRoot = true; return []uint32{streamRequest} }), StatusOK, nil},
		{"close downstream", "proxy_close_stream", args(func(e *abiEnv) []uint32 { return []uint32{2} }), StatusOK,
			func(t *testing.T, e *abiEnv) {
				if e.s.reset {
					t.Error("an HTTP stream was reset by closing a TCP stream")
				}
			}},
		{"close from the root context", "proxy_close_stream", args(func(e *abiEnv) []uint32 { e.inRoot = true; return []uint32{streamRequest} }), StatusOK,
			func(t *testing.T, e *abiEnv) {
				if e.s.reset {
					t.Error("the stream was reset from the root context")
				}
			}},
		{"continue unknown stream type", "proxy_continue_stream", args(func(e *abiEnv) []uint32 { return []uint32{7} }), StatusBadArgument, nil},
		{"close unknown stream type", "proxy_close_stream", args(func(e *abiEnv) []uint32 { return []uint32{7} }), StatusBadArgument, nil},
		{"close request", "proxy_close_stream", args(func(e *abiEnv) []uint32 { return []uint32{streamRequest} }), StatusOK,
			func(t *testing.T, e *abiEnv) {
				if !e.s.reset {
					t.Error("not reset")
				}
			}},

		// shared data and queues
		{"shared data missing", "proxy_get_shared_data", args(func(e *abiEnv) []uint32 { k, n := e.str("k"); return []uint32{k, n, e.ret, e.ret + 4, e.ret + 8} }), StatusNotFound, nil},
		{"shared data round trip", "proxy_set_shared_data", args(func(e *abiEnv) []uint32 { k, n := e.str("k"); v, vn := e.str("v1"); return []uint32{k, n, v, vn, 0} }), StatusOK,
			func(t *testing.T, e *abiEnv) {
				k, n := e.str("k")
				if st, _ := e.call("proxy_get_shared_data", k, n, e.ret, e.ret+4, e.ret+8); st != StatusOK || string(e.returned()) != "v1" {
					t.Fatalf("get: %v %q", st, e.returned())
				}
				cas := e.u32(e.ret + 8)
				v, vn := e.str("v2")
				if st, _ := e.call("proxy_set_shared_data", k, n, v, vn, cas+1); st != StatusCasMismatch {
					t.Errorf("stale cas: %v", st)
				}
				if st, _ := e.call("proxy_set_shared_data", k, n, v, vn, cas); st != StatusOK {
					t.Errorf("current cas: %v", st)
				}
			}},
		{"shared data cas pointer out of bounds", "proxy_get_shared_data", args(func(e *abiEnv) []uint32 { k, n := e.str("k"); return []uint32{k, n, e.ret, e.ret + 4, bad} }), StatusInvalidMemoryAccess, nil},
		{"queue round trip", "proxy_register_shared_queue", args(func(e *abiEnv) []uint32 { q, n := e.str("q"); return []uint32{q, n, e.ret + 12} }), StatusOK,
			func(t *testing.T, e *abiEnv) {
				id := e.u32(e.ret + 12)
				if st, _ := e.call("proxy_dequeue_shared_queue", id, e.ret, e.ret+4); st != StatusEmpty {
					t.Errorf("dequeue empty: %v", st)
				}
				v, vn := e.str("item")
				if st, _ := e.call("proxy_enqueue_shared_queue", id, v, vn); st != StatusOK {
					t.Errorf("enqueue: %v", st)
				}
				if st, _ := e.call("proxy_dequeue_shared_queue", id, e.ret, e.ret+4); st != StatusOK || string(e.returned()) != "item" {
					t.Errorf("dequeue: %v %q", st, e.returned())
				}
				vm, vmn := e.str(e.p.cfg.VMID)
				q, qn := e.str("q")
				if st, _ := e.call("proxy_resolve_shared_queue", vm, vmn, q, qn, e.ret+8); st != StatusOK || e.u32(e.ret+8) != id {
					t.Errorf("resolve: %v %d want %d", st, e.u32(e.ret+8), id)
				}
			}},
		{"resolve unknown queue", "proxy_resolve_shared_queue", args(func(e *abiEnv) []uint32 { q, n := e.str("nope"); return []uint32{0, 0, q, n, e.ret} }), StatusNotFound, nil},
		{"enqueue unknown queue", "proxy_enqueue_shared_queue", args(func(e *abiEnv) []uint32 { return []uint32{0xabcdef, 0, 0} }), StatusNotFound, nil},
		{"dequeue unknown queue", "proxy_dequeue_shared_queue", args(func(e *abiEnv) []uint32 { return []uint32{0xabcdef, e.ret, e.ret + 4} }), StatusNotFound, nil},

		// properties
		{"plugin_root_id", "proxy_get_property", args(prop("plugin_root_id")), StatusOK, wantReturned("probe-root")},
		{"plugin_name", "proxy_get_property", args(prop("plugin_name")), StatusOK, wantReturned("probe-plugin")},
		{"request.path", "proxy_get_property", args(prop("request", "path")), StatusOK, wantReturned("/x?y=1")},
		{"request.url_path", "proxy_get_property", args(prop("request", "url_path")), StatusOK, wantReturned("/x")},
		{"request.method", "proxy_get_property", args(prop("request", "method")), StatusOK, wantReturned("GET")},
		{"request.headers.user-agent", "proxy_get_property", args(prop("request", "headers", "user-agent")), StatusOK, wantReturned("abi-test")},
		{"source.port", "proxy_get_property", args(prop("source", "port")), StatusOK,
			func(t *testing.T, e *abiEnv) {
				if got := binary.LittleEndian.Uint64(e.returned()); got != 1234 { // httptest's RemoteAddr
					t.Errorf("port %d", got)
				}
			}},
		{"missing property", "proxy_get_property", args(prop("no", "such")), StatusNotFound, nil},
		{"response.code before the response", "proxy_get_property", args(prop("response", "code")), StatusNotFound, nil},
		{"property path out of bounds", "proxy_get_property", args(func(e *abiEnv) []uint32 { return []uint32{bad, 5, e.ret, e.ret + 4} }), StatusInvalidMemoryAccess, nil},
		{"property return out of bounds", "proxy_get_property", args(func(e *abiEnv) []uint32 { p, n := e.str("plugin_name"); return []uint32{p, n, bad, e.ret} }), StatusInvalidMemoryAccess, nil},
		{"set property", "proxy_set_property", args(func(e *abiEnv) []uint32 {
			p, n := e.str("my\x00prop")
			v, vn := e.str("val")
			return []uint32{p, n, v, vn}
		}), StatusOK,
			func(t *testing.T, e *abiEnv) {
				if st, _ := e.call("proxy_get_property", prop("my", "prop")(e)...); st != StatusOK || string(e.returned()) != "val" {
					t.Errorf("get back: %v %q", st, e.returned())
				}
			}},

		// contexts, metrics, the rest
		{"effective context unknown", "proxy_set_effective_context", args(func(e *abiEnv) []uint32 { return []uint32{12345} }), StatusBadArgument, nil},
		{"effective context root", "proxy_set_effective_context", args(func(e *abiEnv) []uint32 { return []uint32{e.in.root} }), StatusOK, nil},
		{"done without pending", "proxy_done", args(func(e *abiEnv) []uint32 { return nil }), StatusNotFound, nil},
		{"http call to a cluster that does not exist", "proxy_http_call", args(func(e *abiEnv) []uint32 {
			u, un := e.str("outbound|80||example")
			e.put32(e.ret+12, 77)
			return []uint32{u, un, 0, 0, 0, 0, 0, 0, 1000, e.ret + 12}
		}), StatusBadArgument, func(t *testing.T, e *abiEnv) {
			if e.u32(e.ret+12) != 0 {
				t.Errorf("token %d, want 0 written", e.u32(e.ret+12))
			}
		}},
		{"http call token out of bounds", "proxy_http_call", args(func(e *abiEnv) []uint32 { return []uint32{0, 0, 0, 0, 0, 0, 0, 0, 0, bad} }), StatusInvalidMemoryAccess, nil},
		{"http call uri out of bounds", "proxy_http_call", args(func(e *abiEnv) []uint32 { return []uint32{bad, 9, 0, 0, 0, 0, 0, 0, 0, e.ret} }), StatusInvalidMemoryAccess, nil},
		{"foreign function not found", "proxy_call_foreign_function", args(func(e *abiEnv) []uint32 { p, n := e.str("f"); return []uint32{p, n, 0, 0, e.ret, e.ret + 4} }), StatusNotFound, nil},
		{"metric bad type", "proxy_define_metric", args(func(e *abiEnv) []uint32 { p, n := e.str("m"); return []uint32{7, p, n, e.ret} }), StatusBadArgument, nil},
		{"counter", "proxy_define_metric", args(func(e *abiEnv) []uint32 { p, n := e.str("requests"); return []uint32{metricCounter, p, n, e.ret} }), StatusOK,
			func(t *testing.T, e *abiEnv) {
				id := e.u32(e.ret)
				if st, _ := e.call("proxy_increment_metric", id, 3); st != StatusOK {
					t.Errorf("increment: %v", st)
				}
				if st, _ := e.call("proxy_increment_metric", id, 0xffffffff /* -1 */); st != StatusBadArgument {
					t.Errorf("decrement a counter: %v", st)
				}
				if st, _ := e.call("proxy_get_metric", id, e.ret+8); st != StatusOK || e.u32(e.ret+8) != 3 {
					t.Errorf("get: %v %d", st, e.u32(e.ret+8))
				}
				if e.p.Metrics()["requests"] != 3 {
					t.Errorf("Metrics() %v", e.p.Metrics())
				}
			}},
		{"increment unknown metric", "proxy_increment_metric", args(func(e *abiEnv) []uint32 { return []uint32{999, 1} }), StatusNotFound, nil},
		{"decrement a gauge", "proxy_increment_metric", args(func(e *abiEnv) []uint32 {
			p, n := e.str("inflight")
			if st, _ := e.call("proxy_define_metric", metricGauge, p, n, e.ret); st != StatusOK {
				e.t.Fatalf("define: %v", st)
			}
			return []uint32{e.u32(e.ret), 0xffffffff}
		}), StatusOK, nil},
		{"metric id out of bounds", "proxy_define_metric", args(func(e *abiEnv) []uint32 { p, n := e.str("m"); return []uint32{metricCounter, p, n, bad} }), StatusInvalidMemoryAccess, nil},
		{"metric value out of bounds", "proxy_get_metric", args(func(e *abiEnv) []uint32 {
			p, n := e.str("c")
			if st, err := e.call("proxy_define_metric", metricCounter, p, n, e.ret); err != nil || st != StatusOK {
				e.t.Fatalf("defining the metric: %v %v", st, err)
			}
			return []uint32{e.u32(e.ret), bad}
		}), StatusInvalidMemoryAccess, nil},
		// Timers: exports.cc set_tick_period_milliseconds, always OK; 0 stops the timer.
		{"tick period", "proxy_set_tick_period_milliseconds", args(func(e *abiEnv) []uint32 { return []uint32{0} }), StatusOK,
			func(t *testing.T, e *abiEnv) {
				if e.in.tickPeriod != 0 {
					t.Errorf("tick period %v", e.in.tickPeriod)
				}
			}},
		{"unknown metric", "proxy_get_metric", args(func(e *abiEnv) []uint32 { return []uint32{999, e.ret} }), StatusNotFound, nil},
	}
	// One table per host function: every function the probe can call has rows.
	byOp := map[string][]row{}
	for _, r := range rows {
		byOp[r.op] = append(byOp[r.op], r)
	}
	for _, op := range probeOps {
		if len(byOp[op]) == 0 {
			t.Errorf("no conformance rows for %s", op)
		}
	}
	for _, op := range probeOps {
		t.Run(op, func(t *testing.T) {
			for _, r := range byOp[op] {
				runRow(t, r.name, r.op, r.args, r.want, r.check)
			}
		})
	}
}

func runRow(t *testing.T, name, op string, args func(e *abiEnv) []uint32, want Status, check func(t *testing.T, e *abiEnv)) {
	t.Run(name, func(t *testing.T) {
		e := newABIEnv(t)
		st, err := e.call(op, args(e)...)
		if err != nil {
			t.Fatalf("%s: the call failed: %v", op, err)
		}
		if st != want {
			t.Fatalf("%s returned %v, want %v", op, st, want)
		}
		if check != nil {
			check(t, e)
		}
		if err := e.in.err(); err != nil {
			t.Fatalf("instance broken: %v", err)
		}
	})
}

// TestHostcallsRandomArguments throws random pointers and lengths at every host function: the
// host must answer with an ABI status each time and never panic.
func TestHostcallsRandomArguments(t *testing.T) {
	valid := []Status{StatusOK, StatusNotFound, StatusBadArgument, StatusInvalidMemoryAccess, StatusEmpty,
		StatusCasMismatch, StatusInternalFailure, StatusUnimplemented}
	rng := rand.New(rand.NewPCG(1, 2))
	e := newABIEnv(t)
	memSize := e.in.mod.Memory().Size()
	pick := func() uint32 {
		switch rng.IntN(4) {
		case 0:
			return rng.Uint32() // almost always out of bounds
		case 1:
			return memSize - uint32(rng.IntN(16)) // straddles the end
		case 2:
			return uint32(rng.IntN(16)) // tiny sizes, enum values
		default:
			return e.ret + uint32(rng.IntN(8)) // valid scratch
		}
	}
	for i := range 3000 {
		op := probeOps[rng.IntN(len(probeOps))]
		if op == "proxy_set_tick_period_milliseconds" || op == "proxy_close_stream" {
			continue
		}
		a := make([]uint32, 10)
		for j := range a {
			a[j] = pick()
		}
		st, err := e.call(op, a...)
		if err != nil {
			if strings.Contains(err.Error(), "runtime error") || strings.Contains(err.Error(), "panic") {
				t.Fatalf("call %d %s%v: the host panicked: %v", i, op, a, err)
			}
			// Random writes into valid guest memory can corrupt the guest itself; start over.
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Logf("call %d %s%v broke the guest (not the host): %v", i, op, a, err)
			}
			e = newABIEnv(t)
			continue
		}
		if !slices.Contains(valid, st) {
			t.Fatalf("call %d %s%v returned %v", i, op, a, st)
		}
	}
}

// FuzzHostcalls is the open-ended form of TestHostcallsRandomArguments: go test -fuzz.
func FuzzHostcalls(f *testing.F) {
	f.Add(uint8(0), uint32(2), uint32(bad), uint32(10), uint32(0), uint32(0))
	f.Add(uint8(10), uint32(0), uint32(0), uint32(0xffffffff), uint32(0), uint32(4))
	e := newABIEnv(f)
	f.Fuzz(func(t *testing.T, op uint8, a0, a1, a2, a3, a4 uint32) {
		name := probeOps[int(op)%len(probeOps)]
		if name == "proxy_set_tick_period_milliseconds" || name == "proxy_close_stream" {
			return
		}
		if e.in.err() != nil {
			e = newABIEnv(f)
		}
		st, err := e.call(name, a0, a1, a2, a3, a4, a0, a1, a2, a3, a4)
		if err != nil && (strings.Contains(err.Error(), "runtime error") || strings.Contains(err.Error(), "panic")) {
			t.Fatalf("%s: host panicked: %v", name, err)
		}
		if err == nil && st > StatusUnimplemented {
			t.Fatalf("%s returned %v", name, st)
		}
	})
}
