package wasmhost

import (
	"context"
	"fmt"
	"slices"
	"sync"
)

// vmShared is the data and queues of one VM id, shared by the plugins of that id in this
// process, as Envoy shares them between the workers' VMs.
type vmShared struct {
	key  string
	refs int

	mu        sync.Mutex
	data      map[string]sharedValue
	dataBytes int // keys, values and entryOverhead, against MaxSharedDataBytes
	cas       uint32

	// Under hub's lock: the queues of this VM id, and the bytes waiting in them.
	queues     int
	queueBytes int
}

type sharedValue struct {
	v   []byte
	cas uint32
}

type queue struct {
	vm    *vmShared
	name  string
	items [][]byte
	owner *instance // receives proxy_on_queue_ready on its root context
}

// hub is the process-wide registry of VM ids and shared queues.
var hub = struct {
	sync.Mutex
	vms       map[string]*vmShared
	queues    map[uint32]*queue
	byName    map[[2]string]uint32
	nextQueue uint32
}{vms: map[string]*vmShared{}, queues: map[uint32]*queue{}, byName: map[[2]string]uint32{}}

func acquireShared(vmID string, p *Plugin) *vmShared {
	key := vmID
	if key == "" {
		// Not nameable by any other plugin: a NUL cannot appear in a configured VM id.
		key = fmt.Sprintf("\x00private-%p", p)
	}
	hub.Lock()
	defer hub.Unlock()
	s := hub.vms[key]
	if s == nil {
		s = &vmShared{key: key, data: map[string]sharedValue{}}
		hub.vms[key] = s
	}
	s.refs++
	return s
}

func releaseShared(s *vmShared) {
	hub.Lock()
	defer hub.Unlock()
	s.refs--
	if s.refs > 0 {
		return
	}
	delete(hub.vms, s.key)
	for id, q := range hub.queues {
		if q.vm == s {
			delete(hub.queues, id)
			delete(hub.byName, [2]string{s.key, q.name})
		}
	}
}

func (s *vmShared) get(key string) ([]byte, uint32, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.data[key]
	return v.v, v.cas, ok
}

func (s *vmShared) set(key string, v []byte, cas uint32) Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.data[key]
	if cas != 0 && (!ok || cur.cas != cas) {
		return StatusCasMismatch
	}
	grown := len(v) - len(cur.v)
	if !ok {
		grown = len(key) + len(v) + entryOverhead
	}
	if s.dataBytes+grown > MaxSharedDataBytes {
		s.mu.Unlock() // breakLimit panics; leave the lock usable for the other plugins
		defer s.mu.Lock()
		breakLimit(fmt.Sprintf("shared data (%d MiB per VM)", MaxSharedDataBytes>>20),
			"proxy_set_shared_data of %d bytes under a %d-byte key, with %d bytes held already", len(v), len(key), s.dataBytes)
	}
	s.dataBytes += grown
	s.cas++
	if s.cas == 0 { // 0 means "no CAS" to the guest, never hand it out
		s.cas++
	}
	s.data[key] = sharedValue{v: v, cas: s.cas}
	return StatusOK
}

func registerQueue(s *vmShared, name string, owner *instance) uint32 {
	hub.Lock()
	defer hub.Unlock()
	k := [2]string{s.key, name}
	if id, ok := hub.byName[k]; ok {
		hub.queues[id].owner = owner
		return id
	}
	if s.queues >= MaxQueues {
		hub.Unlock()
		defer hub.Lock()
		breakLimit(fmt.Sprintf("shared queues (%d per VM)", MaxQueues), "proxy_register_shared_queue of a new queue with %d registered", s.queues)
	}
	s.queues++
	hub.nextQueue++
	id := hub.nextQueue
	hub.queues[id] = &queue{vm: s, name: name, owner: owner}
	hub.byName[k] = id
	return id
}

func resolveQueue(vmKey, name string) (uint32, bool) {
	hub.Lock()
	defer hub.Unlock()
	id, ok := hub.byName[[2]string{vmKey, name}]
	return id, ok
}

func enqueue(id uint32, v []byte) Status {
	hub.Lock()
	q, ok := hub.queues[id]
	if !ok {
		hub.Unlock()
		return StatusNotFound
	}
	switch {
	case len(q.items) >= MaxQueueItems:
		hub.Unlock()
		breakLimit(fmt.Sprintf("shared queue length (%d items)", MaxQueueItems), "proxy_enqueue_shared_queue on a queue holding %d items", len(q.items))
	case q.vm.queueBytes+len(v) > MaxQueueBytes:
		held := q.vm.queueBytes
		hub.Unlock()
		breakLimit(fmt.Sprintf("shared queue bytes (%d MiB per VM)", MaxQueueBytes>>20), "proxy_enqueue_shared_queue of %d bytes with %d bytes waiting", len(v), held)
	}
	q.items = append(q.items, v)
	q.vm.queueBytes += len(v)
	owner := q.owner
	hub.Unlock()
	if owner != nil && owner.exported("proxy_on_queue_ready") {
		owner.notifyQueue(id)
	}
	return StatusOK
}

func dequeue(id uint32) ([]byte, Status) {
	hub.Lock()
	defer hub.Unlock()
	q, ok := hub.queues[id]
	if !ok {
		return nil, StatusNotFound
	}
	if len(q.items) == 0 {
		return nil, StatusEmpty
	}
	v := q.items[0]
	q.items[0] = nil
	q.items = q.items[1:]
	q.vm.queueBytes -= len(v)
	return v, StatusOK
}

// notifyQueue schedules proxy_on_queue_ready(id) on the owner. The owner may be the very
// instance making the enqueue, which holds its lock, so the call happens on another goroutine
// once it is free: one goroutine per owner at a time, however many items are enqueued, with
// each queue notified once per drain of the pending set (Envoy too coalesces notifications
// into one per dispatcher turn).
func (in *instance) notifyQueue(id uint32) {
	in.queueMu.Lock()
	defer in.queueMu.Unlock()
	if in.queuePending == nil {
		in.queuePending = map[uint32]bool{}
	}
	in.queuePending[id] = true
	if in.queueNotifying {
		return
	}
	in.queueNotifying = true
	go in.drainQueueNotifications()
}

func (in *instance) drainQueueNotifications() {
	defer func() {
		if r := recover(); r != nil {
			in.p.log.Error("queue notifications stopped by a panic", "panic", fmt.Sprint(r))
			in.queueMu.Lock()
			in.queueNotifying = false
			in.queueMu.Unlock()
		}
	}()
	for {
		in.queueMu.Lock()
		if len(in.queuePending) == 0 {
			in.queueNotifying = false
			in.queueMu.Unlock()
			return
		}
		ids := make([]uint32, 0, len(in.queuePending))
		for id := range in.queuePending {
			ids = append(ids, id)
		}
		clear(in.queuePending)
		in.queueMu.Unlock()
		slices.Sort(ids)
		for _, id := range ids {
			in.queueReady(id)
		}
	}
}

func (in *instance) queueReady(id uint32) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.err() != nil {
		return
	}
	select {
	case <-in.p.closing:
		return
	default:
	}
	in.active, in.cur = in.root, nil
	if _, err := in.call(context.Background(), in.p.cfg.CallTimeout, "proxy_on_queue_ready", uint64(in.root), uint64(id)); err != nil {
		in.p.log.Error("proxy_on_queue_ready failed", "err", err)
	}
}

// metricSet holds the metrics a plugin defines (proxy_define_metric and friends).
type metricSet struct {
	mu     sync.Mutex
	byName map[string]uint32
	all    []metric
}

type metric struct {
	kind  uint32
	name  string
	value uint64
}

const (
	metricCounter   = 0
	metricGauge     = 1
	metricHistogram = 2
)

func (m *metricSet) define(kind uint32, name string) (uint32, Status) {
	if kind > metricHistogram {
		return 0, StatusBadArgument
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if id, ok := m.byName[name]; ok {
		return id, StatusOK
	}
	if len(m.all) >= MaxMetrics {
		m.mu.Unlock()
		defer m.mu.Lock()
		breakLimit(fmt.Sprintf("metrics (%d per plugin)", MaxMetrics), "proxy_define_metric of a new metric with %d defined", len(m.all))
	}
	if m.byName == nil {
		m.byName = map[string]uint32{}
	}
	m.all = append(m.all, metric{kind: kind, name: name})
	id := uint32(len(m.all)) // ids start at 1
	m.byName[name] = id
	return id, StatusOK
}

func (m *metricSet) lookup(id uint32) *metric {
	if id == 0 || int(id) > len(m.all) {
		return nil
	}
	return &m.all[id-1]
}

func (m *metricSet) increment(id uint32, delta int64) Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	x := m.lookup(id)
	switch {
	case x == nil:
		return StatusNotFound
	case x.kind == metricCounter && delta < 0, x.kind == metricHistogram:
		return StatusBadArgument
	}
	x.value += uint64(delta)
	return StatusOK
}

func (m *metricSet) record(id uint32, v uint64) Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	x := m.lookup(id)
	if x == nil {
		return StatusNotFound
	}
	x.value = v
	return StatusOK
}

func (m *metricSet) get(id uint32) (uint64, Status) {
	m.mu.Lock()
	defer m.mu.Unlock()
	x := m.lookup(id)
	if x == nil {
		return 0, StatusNotFound
	}
	return x.value, StatusOK
}

// Metrics returns the current value of every metric the filter defined, by name.
func (p *Plugin) Metrics() map[string]uint64 {
	p.metrics.mu.Lock()
	defer p.metrics.mu.Unlock()
	out := make(map[string]uint64, len(p.metrics.all))
	for _, x := range p.metrics.all {
		out[x.name] = x.value
	}
	return out
}
