//go:build wasip1

// Package proxywasm is the small proxy-wasm ABI v0.2.1 glue shared by the example filters:
// the host functions they import, the callbacks they export, and a context registry.
// It is deliberately tiny; a real filter would use a full SDK.
package proxywasm

import "unsafe"

// Status is a proxy_status_t returned by every host function.
type Status uint32

// Status values from the ABI specification.
const (
	StatusOK                  Status = 0
	StatusNotFound            Status = 1
	StatusBadArgument         Status = 2
	StatusSerializationFailed Status = 3
	StatusParseFailure        Status = 4
	StatusInvalidMemoryAccess Status = 6
	StatusEmpty               Status = 7
	StatusCasMismatch         Status = 8
	StatusInternalFailure     Status = 10
	StatusUnimplemented       Status = 12
)

var statusNames = map[Status]string{
	StatusOK: "ok", StatusNotFound: "not found", StatusBadArgument: "bad argument",
	StatusSerializationFailed: "serialization failure", StatusParseFailure: "parse failure",
	StatusInvalidMemoryAccess: "invalid memory access", StatusEmpty: "empty",
	StatusCasMismatch: "cas mismatch", StatusInternalFailure: "internal failure",
	StatusUnimplemented: "unimplemented",
}

// Error makes a non-OK status usable as a Go error.
func (s Status) Error() string {
	if n, ok := statusNames[s]; ok {
		return "proxy-wasm status: " + n
	}
	return "proxy-wasm status: unknown"
}

func (s Status) err() error {
	if s == StatusOK {
		return nil
	}
	return s
}

// MapType selects a header map (proxy_map_type_t).
type MapType uint32

// Header maps of an HTTP stream.
const (
	RequestHeaders   MapType = 0
	RequestTrailers  MapType = 1
	ResponseHeaders  MapType = 2
	ResponseTrailers MapType = 3
)

// BufferType selects a buffer (proxy_buffer_type_t).
type BufferType uint32

// Buffers a filter can read.
const (
	RequestBody         BufferType = 0
	ResponseBody        BufferType = 1
	VMConfiguration     BufferType = 6
	PluginConfiguration BufferType = 7
)

// LogLevel is a proxy_log_level_t.
type LogLevel uint32

// Log levels.
const (
	LogTrace LogLevel = iota
	LogDebug
	LogInfo
	LogWarn
	LogError
	LogCritical
)

// Action is what a stream callback tells the host to do next (proxy_action_t).
type Action uint32

// Actions.
const (
	Continue Action = 0
	Pause    Action = 1
)

//go:wasmimport env proxy_log
func proxyLog(level uint32, msg unsafe.Pointer, size uint32) uint32

//go:wasmimport env proxy_get_buffer_bytes
func proxyGetBufferBytes(bt uint32, start, maxSize uint32, retData, retSize *uint32) uint32

//go:wasmimport env proxy_set_buffer_bytes
func proxySetBufferBytes(bt uint32, start, size uint32, data unsafe.Pointer, dataSize uint32) uint32

//go:wasmimport env proxy_get_header_map_value
func proxyGetHeaderMapValue(mt uint32, key unsafe.Pointer, keySize uint32, retData, retSize *uint32) uint32

//go:wasmimport env proxy_add_header_map_value
func proxyAddHeaderMapValue(mt uint32, key unsafe.Pointer, keySize uint32, value unsafe.Pointer, valueSize uint32) uint32

//go:wasmimport env proxy_replace_header_map_value
func proxyReplaceHeaderMapValue(mt uint32, key unsafe.Pointer, keySize uint32, value unsafe.Pointer, valueSize uint32) uint32

//go:wasmimport env proxy_remove_header_map_value
func proxyRemoveHeaderMapValue(mt uint32, key unsafe.Pointer, keySize uint32) uint32

//go:wasmimport env proxy_get_property
func proxyGetProperty(path unsafe.Pointer, pathSize uint32, retData, retSize *uint32) uint32

//go:wasmimport env proxy_send_local_response
func proxySendLocalResponse(code uint32, details unsafe.Pointer, detailsSize uint32, body unsafe.Pointer, bodySize uint32, headers unsafe.Pointer, headersSize uint32, grpcStatus int32) uint32

//go:wasmimport env proxy_set_tick_period_milliseconds
func proxySetTickPeriodMilliseconds(ms uint32) uint32

//go:wasmimport env proxy_get_shared_data
func proxyGetSharedData(key unsafe.Pointer, keySize uint32, retData, retSize, retCas *uint32) uint32

//go:wasmimport env proxy_set_shared_data
func proxySetSharedData(key unsafe.Pointer, keySize uint32, value unsafe.Pointer, valueSize uint32, cas uint32) uint32
