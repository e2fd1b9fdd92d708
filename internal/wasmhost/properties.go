package wasmhost

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/http"
	"strconv"
	"strings"
)

// Property values follow Envoy's encoding: strings as their bytes, integers as 8-byte
// little-endian int64, booleans as one byte, maps as serialized header maps.

func splitPath(b []byte) []string {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil
	}
	return strings.Split(string(b), "\x00")
}

func propInt(v int64) []byte { return binary.LittleEndian.AppendUint64(nil, uint64(v)) }

func propBool(v bool) []byte {
	if v {
		return []byte{1}
	}
	return []byte{0}
}

// property answers proxy_get_property. Documented in docs/wasmhost.md; keep the two in step.
func (h *hc) property(path []string) ([]byte, Status) {
	if len(path) == 0 {
		return nil, StatusNotFound
	}
	key := strings.Join(path, ".")
	s := h.in.cur
	if s != nil {
		if v, ok := s.props[key]; ok {
			return v, StatusOK
		}
	}
	if v, ok := h.in.props[key]; ok {
		return v, StatusOK
	}
	p := h.in.p
	if v, ok := p.cfg.Properties[key]; ok {
		return v, StatusOK
	}
	switch key {
	case "plugin_name":
		return []byte(p.cfg.Name), StatusOK
	case "plugin_root_id":
		return []byte(p.cfg.RootID), StatusOK
	case "plugin_vm_id":
		return []byte(p.cfg.VMID), StatusOK
	}
	if s == nil {
		return nil, StatusNotFound
	}
	return s.property(path)
}

func (s *stream) property(path []string) ([]byte, Status) {
	r := s.req
	hdr := func(m *fieldMap, name string) ([]byte, Status) {
		if m == nil {
			return nil, StatusNotFound
		}
		v, ok := m.f.get(name)
		if !ok {
			return nil, StatusNotFound
		}
		return []byte(v), StatusOK
	}
	str := func(v string) ([]byte, Status) { return []byte(v), StatusOK }
	switch path[0] {
	case "request":
		if len(path) == 3 && path[1] == "headers" {
			return hdr(s.reqHeaders, strings.ToLower(path[2]))
		}
		if len(path) != 2 {
			break
		}
		switch path[1] {
		case "path":
			return hdr(s.reqHeaders, ":path")
		case "url_path":
			v, st := hdr(s.reqHeaders, ":path")
			if i := bytes.IndexByte(v, '?'); i >= 0 {
				v = v[:i]
			}
			return v, st
		case "query":
			v, st := hdr(s.reqHeaders, ":path")
			if i := bytes.IndexByte(v, '?'); i >= 0 {
				return v[i+1:], st
			}
			return nil, st
		case "host":
			return hdr(s.reqHeaders, ":authority")
		case "scheme":
			return hdr(s.reqHeaders, ":scheme")
		case "method":
			return hdr(s.reqHeaders, ":method")
		case "headers":
			if s.reqHeaders == nil {
				return nil, StatusNotFound
			}
			return s.reqHeaders.f.serialize(), StatusOK
		case "referer":
			return hdr(s.reqHeaders, "referer")
		case "useragent":
			return hdr(s.reqHeaders, "user-agent")
		case "id":
			return hdr(s.reqHeaders, "x-request-id")
		case "protocol":
			return str(r.Proto)
		case "time":
			return propInt(s.start.UnixNano()), StatusOK
		case "size":
			if r.ContentLength < 0 {
				return nil, StatusNotFound
			}
			return propInt(r.ContentLength), StatusOK
		}
	case "response":
		if len(path) == 3 && path[1] == "headers" {
			return hdr(s.respHeaders, strings.ToLower(path[2]))
		}
		if len(path) == 3 && path[1] == "trailers" {
			return hdr(s.respTrailers, strings.ToLower(path[2]))
		}
		if len(path) != 2 || s.respHeaders == nil {
			break
		}
		switch path[1] {
		case "code":
			return propInt(int64(s.status)), StatusOK
		case "headers":
			return s.respHeaders.f.serialize(), StatusOK
		case "code_details":
			if s.local != nil {
				return str(s.local.details)
			}
			return str("via_upstream")
		}
	case "source":
		return addrProperty(path, r.RemoteAddr)
	case "destination":
		if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			return addrProperty(path, a.String())
		}
	case "connection":
		if len(path) != 2 {
			break
		}
		switch path[1] {
		case "mtls":
			return propBool(r.TLS != nil && len(r.TLS.PeerCertificates) > 0), StatusOK
		case "requested_server_name":
			if r.TLS != nil {
				return str(r.TLS.ServerName)
			}
			return str("")
		}
	}
	return nil, StatusNotFound
}

func addrProperty(path []string, hostport string) ([]byte, Status) {
	if len(path) != 2 || hostport == "" {
		return nil, StatusNotFound
	}
	switch path[1] {
	case "address":
		return []byte(hostport), StatusOK
	case "port":
		_, port, err := net.SplitHostPort(hostport)
		if err != nil {
			return nil, StatusNotFound
		}
		n, err := strconv.ParseInt(port, 10, 64)
		if err != nil {
			return nil, StatusNotFound
		}
		return propInt(n), StatusOK
	}
	return nil, StatusNotFound
}

// setProperty answers proxy_set_property: values live in the active context (the stream, or
// the VM's root context) and shadow built-in attributes there.
func (h *hc) setProperty(path []string, v []byte) Status {
	if len(path) == 0 {
		return StatusBadArgument
	}
	key := strings.Join(path, ".")
	if s := h.in.cur; s != nil {
		if s.props == nil {
			s.props = map[string][]byte{}
		}
		s.props[key] = v
		return StatusOK
	}
	if h.in.props == nil {
		h.in.props = map[string][]byte{}
	}
	h.in.props[key] = v
	return StatusOK
}
