//go:build wasip1

package proxywasm

import "unsafe"

// pinned keeps every buffer the host asked for reachable until the hostcall that asked for it
// hands it back, so the garbage collector cannot free memory the host has written into. Keyed
// by guest address, which also lets returned pointers be turned back into slices without
// integer-to-pointer conversions.
var pinned = map[uint32][]byte{}

//go:wasmexport proxy_on_memory_allocate
func onMemoryAllocate(size uint32) uint32 {
	buf := make([]byte, max(size, 1))
	addr := uint32(uintptr(unsafe.Pointer(&buf[0])))
	pinned[addr] = buf
	return addr
}

// take returns the size bytes the host placed at addr and forgets the pin.
func take(addr, size uint32) []byte {
	if addr == 0 || size == 0 {
		return nil
	}
	buf, ok := pinned[addr]
	if !ok {
		return nil
	}
	delete(pinned, addr)
	if int(size) > len(buf) {
		return nil
	}
	return buf[:size:size]
}

func strPtr(s string) (unsafe.Pointer, uint32) {
	return unsafe.Pointer(unsafe.StringData(s)), uint32(len(s))
}

func bytesPtr(b []byte) (unsafe.Pointer, uint32) {
	return unsafe.Pointer(unsafe.SliceData(b)), uint32(len(b))
}
