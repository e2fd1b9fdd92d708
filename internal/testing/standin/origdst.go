package standin

import (
	"encoding/binary"
	"fmt"
	"net"
	"syscall"
	"unsafe"
)

// soOriginalDst is netfilter's SO_ORIGINAL_DST (linux/netfilter_ipv4.h): the destination a
// connection had before an iptables REDIRECT rewrote it to the proxy's port.
const soOriginalDst = 80

// originalDst returns the pre-REDIRECT destination of c, or its local address when it was not
// redirected (as Envoy's original_dst listener filter falls back to).
func originalDst(c *net.TCPConn) (*net.TCPAddr, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var addr syscall.RawSockaddrInet4
	var sysErr error
	if err := rc.Control(func(fd uintptr) {
		size := uint32(unsafe.Sizeof(addr))
		_, _, e := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.IPPROTO_IP, soOriginalDst,
			uintptr(unsafe.Pointer(&addr)), uintptr(unsafe.Pointer(&size)), 0)
		if e != 0 {
			sysErr = e
		}
	}); err != nil {
		return nil, err
	}
	if sysErr != nil {
		// ENOENT: no conntrack entry, i.e. not redirected.
		if la, ok := c.LocalAddr().(*net.TCPAddr); ok {
			return la, nil
		}
		return nil, fmt.Errorf("SO_ORIGINAL_DST: %w", sysErr)
	}
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&addr.Port))[:])
	return &net.TCPAddr{IP: net.IPv4(addr.Addr[0], addr.Addr[1], addr.Addr[2], addr.Addr[3]), Port: int(port)}, nil
}
