//go:build wasip1

package proxywasm

import (
	"encoding/binary"
	"strings"
)

// Log writes msg to the host's log at level.
func Log(level LogLevel, msg string) {
	p, n := strPtr(msg)
	proxyLog(uint32(level), p, n)
}

// GetBuffer returns the whole buffer bt.
func GetBuffer(bt BufferType) ([]byte, error) {
	var data, size uint32
	if err := Status(proxyGetBufferBytes(uint32(bt), 0, 0xffffffff, &data, &size)).err(); err != nil {
		return nil, err
	}
	return take(data, size), nil
}

// SetBuffer replaces the whole buffer bt with b.
func SetBuffer(bt BufferType, b []byte) error {
	p, n := bytesPtr(b)
	return Status(proxySetBufferBytes(uint32(bt), 0, 0xffffffff, p, n)).err()
}

// GetHeader returns the value of header name in map mt.
func GetHeader(mt MapType, name string) (string, error) {
	kp, kn := strPtr(name)
	var data, size uint32
	if err := Status(proxyGetHeaderMapValue(uint32(mt), kp, kn, &data, &size)).err(); err != nil {
		return "", err
	}
	return string(take(data, size)), nil
}

// AddHeader appends a header to map mt, keeping existing values.
func AddHeader(mt MapType, name, value string) error {
	kp, kn := strPtr(name)
	vp, vn := strPtr(value)
	return Status(proxyAddHeaderMapValue(uint32(mt), kp, kn, vp, vn)).err()
}

// ReplaceHeader sets header name in map mt to value, replacing existing values.
func ReplaceHeader(mt MapType, name, value string) error {
	kp, kn := strPtr(name)
	vp, vn := strPtr(value)
	return Status(proxyReplaceHeaderMapValue(uint32(mt), kp, kn, vp, vn)).err()
}

// RemoveHeader deletes header name from map mt.
func RemoveHeader(mt MapType, name string) error {
	kp, kn := strPtr(name)
	return Status(proxyRemoveHeaderMapValue(uint32(mt), kp, kn)).err()
}

// GetProperty reads a host attribute such as ("request", "path") or ("plugin_root_id").
func GetProperty(path ...string) ([]byte, error) {
	// The ABI separates path segments with NUL bytes.
	pp, pn := strPtr(strings.Join(path, "\x00"))
	var data, size uint32
	if err := Status(proxyGetProperty(pp, pn, &data, &size)).err(); err != nil {
		return nil, err
	}
	return take(data, size), nil
}

// SendLocalResponse answers the stream from the filter instead of the upstream.
func SendLocalResponse(code uint32, details string, body []byte, headers [][2]string) error {
	dp, dn := strPtr(details)
	bp, bn := bytesPtr(body)
	hp, hn := bytesPtr(SerializeMap(headers))
	return Status(proxySendLocalResponse(code, dp, dn, bp, bn, hp, hn, -1)).err()
}

// SetTickPeriod asks the host to call OnTick on the root context every ms milliseconds.
func SetTickPeriod(ms uint32) error {
	return Status(proxySetTickPeriodMilliseconds(ms)).err()
}

// GetSharedData returns the VM-wide value of key and its compare-and-swap token.
func GetSharedData(key string) ([]byte, uint32, error) {
	kp, kn := strPtr(key)
	var data, size, cas uint32
	if err := Status(proxyGetSharedData(kp, kn, &data, &size, &cas)).err(); err != nil {
		return nil, 0, err
	}
	return take(data, size), cas, nil
}

// SetSharedData stores value under key if cas still matches (0 means unconditionally).
func SetSharedData(key string, value []byte, cas uint32) error {
	kp, kn := strPtr(key)
	vp, vn := bytesPtr(value)
	return Status(proxySetSharedData(kp, kn, vp, vn, cas)).err()
}

// SerializeMap encodes header pairs in the ABI's map format: a count, the key and value
// lengths, then each key and value followed by a NUL byte.
func SerializeMap(pairs [][2]string) []byte {
	size := 4
	for _, p := range pairs {
		size += 8 + len(p[0]) + len(p[1]) + 2
	}
	b := make([]byte, 0, size)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(pairs)))
	for _, p := range pairs {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p[0])))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p[1])))
	}
	for _, p := range pairs {
		b = append(b, p[0]...)
		b = append(b, 0)
		b = append(b, p[1]...)
		b = append(b, 0)
	}
	return b
}
