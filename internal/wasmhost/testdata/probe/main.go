//go:build wasip1

// Command probe is a deliberately misbehaving proxy-wasm filter for the host's tests. Its
// plugin configuration and the request header x-probe choose what it does; probe_hostcall
// calls any host function with raw arguments, for ABI conformance tests.
package main

import (
	"strings"
	"syscall"
	"unsafe"
)

func main() {}

//go:wasmimport env proxy_log
func proxyLog(a, b, c uint32) uint32

//go:wasmimport env proxy_get_log_level
func proxyGetLogLevel(a uint32) uint32

//go:wasmimport env proxy_get_current_time_nanoseconds
func proxyGetCurrentTimeNanoseconds(a uint32) uint32

//go:wasmimport env proxy_set_tick_period_milliseconds
func proxySetTickPeriodMilliseconds(a uint32) uint32

//go:wasmimport env proxy_get_buffer_bytes
func proxyGetBufferBytes(a, b, c, d, e uint32) uint32

//go:wasmimport env proxy_set_buffer_bytes
func proxySetBufferBytes(a, b, c, d, e uint32) uint32

//go:wasmimport env proxy_get_buffer_status
func proxyGetBufferStatus(a, b, c uint32) uint32

//go:wasmimport env proxy_get_header_map_size
func proxyGetHeaderMapSize(a, b uint32) uint32

//go:wasmimport env proxy_get_header_map_pairs
func proxyGetHeaderMapPairs(a, b, c uint32) uint32

//go:wasmimport env proxy_set_header_map_pairs
func proxySetHeaderMapPairs(a, b, c uint32) uint32

//go:wasmimport env proxy_get_header_map_value
func proxyGetHeaderMapValue(a, b, c, d, e uint32) uint32

//go:wasmimport env proxy_add_header_map_value
func proxyAddHeaderMapValue(a, b, c, d, e uint32) uint32

//go:wasmimport env proxy_replace_header_map_value
func proxyReplaceHeaderMapValue(a, b, c, d, e uint32) uint32

//go:wasmimport env proxy_remove_header_map_value
func proxyRemoveHeaderMapValue(a, b, c uint32) uint32

//go:wasmimport env proxy_send_local_response
func proxySendLocalResponse(a, b, c, d, e, f, g, h uint32) uint32

//go:wasmimport env proxy_continue_stream
func proxyContinueStream(a uint32) uint32

//go:wasmimport env proxy_close_stream
func proxyCloseStream(a uint32) uint32

//go:wasmimport env proxy_get_shared_data
func proxyGetSharedData(a, b, c, d, e uint32) uint32

//go:wasmimport env proxy_set_shared_data
func proxySetSharedData(a, b, c, d, e uint32) uint32

//go:wasmimport env proxy_register_shared_queue
func proxyRegisterSharedQueue(a, b, c uint32) uint32

//go:wasmimport env proxy_resolve_shared_queue
func proxyResolveSharedQueue(a, b, c, d, e uint32) uint32

//go:wasmimport env proxy_enqueue_shared_queue
func proxyEnqueueSharedQueue(a, b, c uint32) uint32

//go:wasmimport env proxy_dequeue_shared_queue
func proxyDequeueSharedQueue(a, b, c uint32) uint32

//go:wasmimport env proxy_get_property
func proxyGetProperty(a, b, c, d uint32) uint32

//go:wasmimport env proxy_set_property
func proxySetProperty(a, b, c, d uint32) uint32

//go:wasmimport env proxy_http_call
func proxyHTTPCall(a, b, c, d, e, f, g, h, i, j uint32) uint32

//go:wasmimport env proxy_set_effective_context
func proxySetEffectiveContext(a uint32) uint32

//go:wasmimport env proxy_done
func proxyDone() uint32

//go:wasmimport env proxy_define_metric
func proxyDefineMetric(a, b, c, d uint32) uint32

//go:wasmimport env proxy_increment_metric
func proxyIncrementMetric(a uint32, b int64) uint32

//go:wasmimport env proxy_get_metric
func proxyGetMetric(a, b uint32) uint32

//go:wasmimport env proxy_call_foreign_function
func proxyCallForeignFunction(a, b, c, d, e, f uint32) uint32

// Host function numbers for probe_hostcall; internal/wasmhost's tests use the same list.
var hostcalls = []func(a []uint32) uint32{
	func(a []uint32) uint32 { return proxyLog(a[0], a[1], a[2]) },
	func(a []uint32) uint32 { return proxyGetLogLevel(a[0]) },
	func(a []uint32) uint32 { return proxyGetCurrentTimeNanoseconds(a[0]) },
	func(a []uint32) uint32 { return proxySetTickPeriodMilliseconds(a[0]) },
	func(a []uint32) uint32 { return proxyGetBufferBytes(a[0], a[1], a[2], a[3], a[4]) },
	func(a []uint32) uint32 { return proxySetBufferBytes(a[0], a[1], a[2], a[3], a[4]) },
	func(a []uint32) uint32 { return proxyGetBufferStatus(a[0], a[1], a[2]) },
	func(a []uint32) uint32 { return proxyGetHeaderMapSize(a[0], a[1]) },
	func(a []uint32) uint32 { return proxyGetHeaderMapPairs(a[0], a[1], a[2]) },
	func(a []uint32) uint32 { return proxySetHeaderMapPairs(a[0], a[1], a[2]) },
	func(a []uint32) uint32 { return proxyGetHeaderMapValue(a[0], a[1], a[2], a[3], a[4]) },
	func(a []uint32) uint32 { return proxyAddHeaderMapValue(a[0], a[1], a[2], a[3], a[4]) },
	func(a []uint32) uint32 { return proxyReplaceHeaderMapValue(a[0], a[1], a[2], a[3], a[4]) },
	func(a []uint32) uint32 { return proxyRemoveHeaderMapValue(a[0], a[1], a[2]) },
	func(a []uint32) uint32 {
		return proxySendLocalResponse(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7])
	},
	func(a []uint32) uint32 { return proxyContinueStream(a[0]) },
	func(a []uint32) uint32 { return proxyCloseStream(a[0]) },
	func(a []uint32) uint32 { return proxyGetSharedData(a[0], a[1], a[2], a[3], a[4]) },
	func(a []uint32) uint32 { return proxySetSharedData(a[0], a[1], a[2], a[3], a[4]) },
	func(a []uint32) uint32 { return proxyRegisterSharedQueue(a[0], a[1], a[2]) },
	func(a []uint32) uint32 { return proxyResolveSharedQueue(a[0], a[1], a[2], a[3], a[4]) },
	func(a []uint32) uint32 { return proxyEnqueueSharedQueue(a[0], a[1], a[2]) },
	func(a []uint32) uint32 { return proxyDequeueSharedQueue(a[0], a[1], a[2]) },
	func(a []uint32) uint32 { return proxyGetProperty(a[0], a[1], a[2], a[3]) },
	func(a []uint32) uint32 { return proxySetProperty(a[0], a[1], a[2], a[3]) },
	func(a []uint32) uint32 {
		return proxyHTTPCall(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9])
	},
	func(a []uint32) uint32 { return proxySetEffectiveContext(a[0]) },
	func(a []uint32) uint32 { return proxyDone() },
	func(a []uint32) uint32 { return proxyDefineMetric(a[0], a[1], a[2], a[3]) },
	func(a []uint32) uint32 { return proxyIncrementMetric(a[0], int64(int32(a[1]))) },
	func(a []uint32) uint32 { return proxyGetMetric(a[0], a[1]) },
	func(a []uint32) uint32 { return proxyCallForeignFunction(a[0], a[1], a[2], a[3], a[4], a[5]) },
}

//go:wasmexport probe_hostcall
func probeHostcall(op, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9 uint32) uint32 {
	if int(op) >= len(hostcalls) {
		return 0xffffffff
	}
	return hostcalls[op]([]uint32{a0, a1, a2, a3, a4, a5, a6, a7, a8, a9})
}

// Buffers handed to the host stay reachable until the test frees them.
var pinned = map[uint32][]byte{}

//go:wasmexport proxy_on_memory_allocate
func onMemoryAllocate(size uint32) uint32 {
	b := make([]byte, max(size, 1))
	p := uint32(uintptr(unsafe.Pointer(&b[0])))
	pinned[p] = b
	return p
}

//go:wasmexport probe_free_all
func freeAll() { clear(pinned) }

//go:wasmexport proxy_abi_version_0_2_1
func abi() {}

var config string

func str(s string) (uint32, uint32) {
	return uint32(uintptr(unsafe.Pointer(unsafe.StringData(s)))), uint32(len(s))
}

func bytesAt(p, n uint32) []byte {
	if b, ok := pinned[p]; ok && int(n) <= len(b) {
		delete(pinned, p)
		return b[:n]
	}
	return nil
}

func getBuffer(bt uint32) string {
	var p, n uint32
	if proxyGetBufferBytes(bt, 0, 1<<30, uint32(uintptr(unsafe.Pointer(&p))), uint32(uintptr(unsafe.Pointer(&n)))) != 0 {
		return ""
	}
	return string(bytesAt(p, n))
}

func requestHeader(name string) string {
	var p, n uint32
	kp, kn := str(name)
	if proxyGetHeaderMapValue(0, kp, kn, uint32(uintptr(unsafe.Pointer(&p))), uint32(uintptr(unsafe.Pointer(&n)))) != 0 {
		return ""
	}
	return string(bytesAt(p, n))
}

//go:wasmexport proxy_on_context_create
func onContextCreate(id, parent uint32) {}

//go:wasmexport proxy_on_vm_start
func onVMStart(id, size uint32) uint32 {
	if getBuffer(6) == "vm-start-false" {
		return 0
	}
	return 1
}

//go:wasmexport proxy_on_configure
func onConfigure(id, size uint32) uint32 {
	config = getBuffer(7)
	switch config {
	case "trap-configure":
		panic("probe: told to trap in proxy_on_configure")
	case "reject":
		msg := "probe: configuration rejected on purpose"
		p, n := str(msg)
		proxyLog(4, p, n)
		return 0
	case "loop-configure":
		for {
		}
	case "tick":
		proxySetTickPeriodMilliseconds(1)
	}
	// "env:NAME=value" accepts the configuration only if the VM's environment, which Go's
	// runtime read through WASI environ_get at start-up, has NAME set to value.
	if want, ok := strings.CutPrefix(config, "env:"); ok {
		name, value, _ := strings.Cut(want, "=")
		if got, found := syscall.Getenv(name); !found || got != value {
			return 0
		}
	}
	return 1
}

var ticks uint32

//go:wasmexport proxy_on_tick
func onTick(id uint32) {
	ticks++
	kp, kn := str("probe-ticks")
	v := []byte{byte(ticks), byte(ticks >> 8), byte(ticks >> 16), byte(ticks >> 24)}
	proxySetSharedData(kp, kn, uint32(uintptr(unsafe.Pointer(&v[0]))), 4, 0)
}

var hog [][]byte

//go:wasmexport proxy_on_request_headers
func onRequestHeaders(id, n, eos uint32) uint32 {
	mode := requestHeader("x-probe")
	modes[id] = mode // request headers are gone by the response callbacks, as in Envoy
	switch mode {
	case "loop":
		for {
		}
	case "hog":
		for {
			hog = append(hog, make([]byte, 1<<20))
		}
	case "panic":
		panic("probe: told to panic")
	case "deny":
		kp, kn := str("denied by probe\n")
		dp, dn := str("probe_denied")
		proxySendLocalResponse(403, dp, dn, kp, kn, 0, 0, 0xffffffff)
		return 1
	case "pause":
		return 1
	}
	return 0
}

//go:wasmexport proxy_on_response_headers
func onResponseHeaders(id, n, eos uint32) uint32 {
	if modes[id] == "response-panic" {
		panic("probe: told to panic on the response")
	}
	return 0
}

// proxy_on_response_body: "append-body" adds "!" at the end of the response body.
//
//go:wasmexport proxy_on_response_body
func onResponseBody(id, size, eos uint32) uint32 {
	if modes[id] == "append-body" && eos == 1 {
		p, n := str("!")
		proxySetBufferBytes(1, size, 0, p, n)
	}
	return 0
}

//go:wasmexport proxy_on_done
func onDone(id uint32) uint32 { return 1 }

//go:wasmexport proxy_on_delete
func onDelete(id uint32) { delete(modes, id) }

// modes is the x-probe header of each stream context.
var modes = map[uint32]string{}
