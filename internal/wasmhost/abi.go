package wasmhost

import (
	"encoding/binary"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
)

// Status is a proxy_status_t, the result of every proxy-wasm host function.
type Status uint32

// Status values of the proxy-wasm ABI (v0.2.1; the same numbers in v0.2.0 and v0.1.0).
const (
	StatusOK                   Status = 0
	StatusNotFound             Status = 1
	StatusBadArgument          Status = 2
	StatusSerializationFailure Status = 3
	StatusParseFailure         Status = 4
	StatusInvalidMemoryAccess  Status = 6
	StatusEmpty                Status = 7
	StatusCasMismatch          Status = 8
	StatusInternalFailure      Status = 10
	StatusUnimplemented        Status = 12
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "OK"
	case StatusNotFound:
		return "NOT_FOUND"
	case StatusBadArgument:
		return "BAD_ARGUMENT"
	case StatusSerializationFailure:
		return "SERIALIZATION_FAILURE"
	case StatusParseFailure:
		return "PARSE_FAILURE"
	case StatusInvalidMemoryAccess:
		return "INVALID_MEMORY_ACCESS"
	case StatusEmpty:
		return "EMPTY"
	case StatusCasMismatch:
		return "CAS_MISMATCH"
	case StatusInternalFailure:
		return "INTERNAL_FAILURE"
	case StatusUnimplemented:
		return "UNIMPLEMENTED"
	}
	return fmt.Sprintf("STATUS(%d)", uint32(s))
}

// proxy_map_type_t
const (
	mapRequestHeaders          = 0
	mapRequestTrailers         = 1
	mapResponseHeaders         = 2
	mapResponseTrailers        = 3
	mapGrpcInitialMetadata     = 4
	mapGrpcTrailingMetadata    = 5
	mapHTTPCallResponseHeaders = 6
	mapHTTPCallResponseTrailer = 7
)

// proxy_buffer_type_t
const (
	bufRequestBody         = 0
	bufResponseBody        = 1
	bufDownstreamData      = 2
	bufUpstreamData        = 3
	bufHTTPCallResponse    = 4
	bufGrpcMessage         = 5
	bufVMConfiguration     = 6
	bufPluginConfiguration = 7
	bufForeignArguments    = 8
)

// proxy_stream_type_t
const (
	streamRequest  = 0
	streamResponse = 1
	streamUpstream = 3
)

// proxy_action_t
const (
	actionContinue = 0
	actionPause    = 1
)

// LogLevel is a proxy_log_level_t.
type LogLevel uint32

// Log levels of the proxy-wasm ABI.
const (
	LogTrace LogLevel = iota
	LogDebug
	LogInfo
	LogWarn
	LogError
	LogCritical
)

func (l LogLevel) String() string {
	switch l {
	case LogTrace:
		return "trace"
	case LogDebug:
		return "debug"
	case LogInfo:
		return "info"
	case LogWarn:
		return "warn"
	case LogError:
		return "error"
	case LogCritical:
		return "critical"
	}
	return fmt.Sprintf("level(%d)", uint32(l))
}

// abiVersions are the marker exports a proxy-wasm module must have one of, newest first.
var abiVersions = []string{"proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0", "proxy_abi_version_0_1_0"}

// pair is one HTTP field. Keys are lower case, as HTTP/2 and Envoy present them.
type pair struct{ key, value string }

// fields is an ordered header (or trailer) map as the guest sees it, pseudo-headers first.
type fields []pair

func (f fields) get(key string) (string, bool) {
	for _, p := range f {
		if p.key == key {
			return p.value, true
		}
	}
	return "", false
}

func (f *fields) add(key, value string) { *f = append(*f, pair{key, value}) }

func (f *fields) remove(key string) {
	out := (*f)[:0]
	for _, p := range *f {
		if p.key != key {
			out = append(out, p)
		}
	}
	*f = out
}

// replace sets key to a single value, keeping the position of its first occurrence.
func (f *fields) replace(key, value string) {
	out := (*f)[:0]
	found := false
	for _, p := range *f {
		if p.key == key {
			if found {
				continue
			}
			found = true
			p.value = value
		}
		out = append(out, p)
	}
	*f = out
	if !found {
		f.add(key, value)
	}
}

// serialize encodes the map in the ABI's format: count, (key length, value length) pairs, then
// each key and value followed by a NUL byte.
func (f fields) serialize() []byte {
	size := 4
	for _, p := range f {
		size += 8 + len(p.key) + len(p.value) + 2
	}
	b := make([]byte, 0, size)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(f)))
	for _, p := range f {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p.key)))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p.value)))
	}
	for _, p := range f {
		b = append(b, p.key...)
		b = append(b, 0)
		b = append(b, p.value...)
		b = append(b, 0)
	}
	return b
}

// byteSize is what Envoy's HeaderMap::byteSize reports: the sum of key and value lengths.
func (f fields) byteSize() int {
	n := 0
	for _, p := range f {
		n += len(p.key) + len(p.value)
	}
	return n
}

// Envoy's bounds on a serialized map from the guest (include/proxy-wasm/limits.h).
const (
	pairsMaxBytes = 1 << 20
	pairsMaxCount = 1024
)

// parseFields decodes a serialized map the way Envoy's PairsUtil::toPairs does: every key and
// value NUL-terminated, nothing left over, at most 1024 pairs in 1 MiB. Anything else is not a
// map (false); callers treat it as empty, as Envoy does.
func parseFields(b []byte) (fields, bool) {
	if len(b) < 4 || len(b) > pairsMaxBytes {
		return nil, false
	}
	n := uint64(binary.LittleEndian.Uint32(b))
	if n > pairsMaxCount || n > uint64(len(b)-4)/8 {
		return nil, false
	}
	lens := b[4 : 4+8*n]
	data := b[4+8*n:]
	out := make(fields, 0, n)
	for i := uint64(0); i < n; i++ {
		kl := uint64(binary.LittleEndian.Uint32(lens[8*i:]))
		vl := uint64(binary.LittleEndian.Uint32(lens[8*i+4:]))
		if kl+1+vl+1 > uint64(len(data)) || data[kl] != 0 || data[kl+1+vl] != 0 {
			return nil, false
		}
		k := string(data[:kl])
		data = data[kl+1:]
		v := string(data[:vl])
		data = data[vl+1:]
		out = append(out, pair{k, v})
	}
	if len(data) != 0 {
		return nil, false
	}
	return out, true
}

// headerFields converts an http.Header to fields, with the given pseudo-headers first.
func headerFields(pseudo []pair, h http.Header) fields {
	f := make(fields, 0, len(pseudo)+len(h))
	f = append(f, pseudo...)
	for _, k := range slices.Sorted(maps.Keys(h)) {
		lk := strings.ToLower(k)
		for _, v := range h[k] {
			f = append(f, pair{lk, v})
		}
	}
	return f
}

// applyTo replaces every regular field of h with f's; pseudo-headers are left to the caller.
func (f fields) applyTo(h http.Header) {
	for k := range h {
		delete(h, k)
	}
	for _, p := range f {
		if strings.HasPrefix(p.key, ":") {
			continue
		}
		h.Add(p.key, p.value)
	}
}
