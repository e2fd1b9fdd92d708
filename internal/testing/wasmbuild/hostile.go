package wasmbuild

// Hostile modules of issue 11 (rows 1-3), each a few dozen bytes. They are proxy-wasm
// filters in form (ABI export, lifecycle exports) so that they pass the format checks and
// reach the parts of a host they attack.

var (
	i32x1 = []byte{I32}
	i32x2 = []byte{I32, I32}
	i32x3 = []byte{I32, I32, I32}
	i32x5 = []byte{I32, I32, I32, I32, I32}
)

// abi makes m a filter in form: the ABI marker and the allocator Envoy requires (a
// placeholder that returns 0: these modules never receive data).
func abi(m *Module) {
	m.Export("proxy_abi_version_0_2_1", m.Func(nil, nil, 0))
	m.Export("malloc", m.Func(i32x1, i32x1, 0, I32c(0)...))
}

// MinimalFilter is the smallest module Envoy loads as a filter: the ABI marker, the allocator
// and a memory, and nothing else. Tests and benchmarks that move modules around but never run
// them use it (padded with WithCustomSection for a size).
func MinimalFilter() []byte {
	m := &Module{}
	abi(m)
	m.Memory(1, -1, "memory")
	return m.Bytes()
}

// NoMemoryTickTrap exports no memory, asks for a 1 ms tick in proxy_on_vm_start, and traps in
// proxy_on_tick.
func NoMemoryTickTrap() []byte {
	m := &Module{}
	setTick := m.Import("env", "proxy_set_tick_period_milliseconds", i32x1, i32x1)
	abi(m)
	m.Export("proxy_on_vm_start", m.Func(i32x2, i32x1, 0, Cat(I32c(1), Call(setTick), []byte{OpDrop}, I32c(1))...))
	m.Export("proxy_on_tick", m.Func(i32x1, nil, 0, OpUnreachable))
	return m.Bytes()
}

// NoMemoryHostCall exports no memory and calls a host function that writes guest memory from
// proxy_on_vm_start.
func NoMemoryHostCall() []byte {
	m := &Module{}
	now := m.Import("env", "proxy_get_current_time_nanoseconds", i32x1, i32x1)
	abi(m)
	m.Export("proxy_on_vm_start", m.Func(i32x2, i32x1, 0, Cat(I32c(0), Call(now), []byte{OpDrop}, I32c(1))...))
	return m.Bytes()
}

// TickTrap has memory, starts fine, and traps in every proxy_on_tick (1 ms period): a host must
// survive it at run time.
func TickTrap() []byte {
	m := &Module{}
	setTick := m.Import("env", "proxy_set_tick_period_milliseconds", i32x1, i32x1)
	now := m.Import("env", "proxy_get_current_time_nanoseconds", i32x1, i32x1)
	abi(m)
	m.Memory(1, 1, "memory")
	m.Export("proxy_on_vm_start", m.Func(i32x2, i32x1, 0, Cat(I32c(1), Call(setTick), []byte{OpDrop}, I32c(1))...))
	// An out-of-bounds host write first (answered with a status), then a trap.
	m.Export("proxy_on_tick", m.Func(i32x1, nil, 0, Cat(I32c(-8), Call(now), []byte{OpDrop, OpUnreachable})...))
	return m.Bytes()
}

// StartLoop loops forever in its Wasm start section, which runs at instantiation, before any
// export can be called.
func StartLoop() []byte {
	m := &Module{}
	abi(m)
	m.Memory(1, 1, "memory")
	m.Start(m.Func(nil, nil, 0, OpLoop, BlockEmpty, OpBr, 0, OpEnd))
	return m.Bytes()
}

// SharedDataFlood calls proxy_set_shared_data count times with values of valueKiB KiB under
// distinct keys during proxy_on_configure (issue 11: 1,024 times 1 MiB).
func SharedDataFlood(count int32, valueKiB int32) []byte {
	m := &Module{}
	set := m.Import("env", "proxy_set_shared_data", i32x5, i32x1)
	abi(m)
	pages := uint32(valueKiB/64 + 2)
	m.Memory(pages, int64(pages), "memory")
	const i = 2 // first local after the two parameters
	body := Cat(
		[]byte{OpLoop, BlockEmpty},
		// key: the counter's 4 bytes at address 0
		I32c(0), Local(OpLocalGet, i), []byte{OpI32Store, 2, 0},
		I32c(0), I32c(4), I32c(65536), I32c(valueKiB<<10), I32c(0), Call(set), []byte{OpDrop},
		Local(OpLocalGet, i), I32c(1), []byte{OpI32Add}, Local(OpLocalTee, i), I32c(count), []byte{OpI32LtU, OpBrIf, 0},
		[]byte{OpEnd},
		I32c(1),
	)
	m.Export("proxy_on_configure", m.Func(i32x2, i32x1, 1, body...))
	return m.Bytes()
}

// QueueFlood registers a shared queue, exports proxy_on_queue_ready, and enqueues count
// 1-KiB items during proxy_on_configure: each enqueue used to start a goroutine.
func QueueFlood(count int32) []byte {
	m := &Module{}
	register := m.Import("env", "proxy_register_shared_queue", i32x3, i32x1)
	enqueue := m.Import("env", "proxy_enqueue_shared_queue", i32x3, i32x1)
	abi(m)
	m.Memory(1, 1, "memory")
	const i = 2
	body := Cat(
		// name "q" at 16 (memory is zero, so write it), id written at 0
		I32c(16), I32c('q'), []byte{OpI32Store, 2, 0},
		I32c(16), I32c(1), I32c(0), Call(register), []byte{OpDrop},
		[]byte{OpLoop, BlockEmpty},
		I32c(0), []byte{0x28, 2, 0}, // i32.load id
		I32c(1024), I32c(1024), Call(enqueue), []byte{OpDrop},
		Local(OpLocalGet, i), I32c(1), []byte{OpI32Add}, Local(OpLocalTee, i), I32c(count), []byte{OpI32LtU, OpBrIf, 0},
		[]byte{OpEnd},
		I32c(1),
	)
	m.Export("proxy_on_configure", m.Func(i32x2, i32x1, 1, body...))
	m.Export("proxy_on_queue_ready", m.Func(i32x2, nil, 0))
	return m.Bytes()
}

// HugeTable declares a funcref table of entries entries (issue 11: 2^27), allocated by the host
// at instantiation.
func HugeTable(entries uint32) []byte {
	m := &Module{}
	abi(m)
	m.Memory(1, 1, "memory")
	m.Table(entries, -1)
	return m.Bytes()
}

// Minimal is a well-formed filter that does nothing: the control case.
func Minimal() []byte {
	m := &Module{}
	abi(m)
	m.Memory(1, 1, "memory")
	m.Export("proxy_on_configure", m.Func(i32x2, i32x1, 0, I32c(1)...))
	return m.Bytes()
}

// TableGrow declares a table without a maximum and, in proxy_on_configure, grows it by
// entries; it returns true (accepts its configuration) only if the grow failed.
func TableGrow(entries int32) []byte {
	m := &Module{}
	abi(m)
	m.Memory(1, 1, "memory")
	m.Table(1, -1)
	body := Cat(
		[]byte{0xd0, 0x70}, // ref.null func
		I32c(entries),
		[]byte{0xfc, 0x0f, 0x00}, // table.grow 0
		I32c(-1), []byte{0x46},   // i32.eq
	)
	m.Export("proxy_on_configure", m.Func(i32x2, i32x1, 0, body...))
	return m.Bytes()
}

// MemoryHog grows its memory by pages 64-KiB pages in proxy_on_configure and accepts its
// configuration only if that worked: a host must bound it (a memory limit, an address-space
// limit) without dying of it.
func MemoryHog(pages int32) []byte {
	m := &Module{}
	abi(m)
	m.Memory(1, -1, "memory")
	body := Cat(I32c(pages), []byte{0x40, 0x00}, I32c(-1), []byte{0x47}) // memory.grow; i32.ne
	m.Export("proxy_on_configure", m.Func(i32x2, i32x1, 0, body...))
	return m.Bytes()
}

// SharedDataFloodOnRequest starts fine and floods shared data (count values of valueKiB KiB)
// in proxy_on_request_headers: a host serving traffic must refuse the request, not grow.
func SharedDataFloodOnRequest(count int32, valueKiB int32) []byte {
	m := &Module{}
	set := m.Import("env", "proxy_set_shared_data", i32x5, i32x1)
	abi(m)
	pages := uint32(valueKiB/64 + 2)
	m.Memory(pages, int64(pages), "memory")
	const i = 3 // first local after the three parameters
	body := Cat(
		[]byte{OpLoop, BlockEmpty},
		I32c(0), Local(OpLocalGet, i), []byte{OpI32Store, 2, 0},
		I32c(0), I32c(4), I32c(65536), I32c(valueKiB<<10), I32c(0), Call(set), []byte{OpDrop},
		Local(OpLocalGet, i), I32c(1), []byte{OpI32Add}, Local(OpLocalTee, i), I32c(count), []byte{OpI32LtU, OpBrIf, 0},
		[]byte{OpEnd},
		I32c(0), // Continue
	)
	m.Export("proxy_on_context_create", m.Func(i32x2, nil, 0))
	m.Export("proxy_on_request_headers", m.Func(i32x3, i32x1, 1, body...))
	return m.Bytes()
}
