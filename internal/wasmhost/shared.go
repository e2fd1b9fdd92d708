package wasmhost

import (
	"context"
	"fmt"
	"sync"
)

// vmShared is the data and queues of one VM id, shared by the plugins of that id in this
// process, as Envoy shares them between the workers' VMs.
type vmShared struct {
	key  string
	refs int

	mu   sync.Mutex
	data map[string]sharedValue
	cas  uint32
}

type sharedValue struct {
	v   []byte
	cas uint32
}

type queue struct {
	vm    string
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

// maxQueueItems bounds a queue nobody drains; enqueue beyond it fails.
const maxQueueItems = 10000

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
		if q.vm == s.key {
			delete(hub.queues, id)
			delete(hub.byName, [2]string{q.vm, q.name})
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
	hub.nextQueue++
	id := hub.nextQueue
	hub.queues[id] = &queue{vm: s.key, name: name, owner: owner}
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
	if len(q.items) >= maxQueueItems {
		hub.Unlock()
		return StatusInternalFailure
	}
	q.items = append(q.items, v)
	owner := q.owner
	hub.Unlock()
	if owner != nil && owner.exported("proxy_on_queue_ready") {
		// The owner may be the very instance making this call, which holds its lock: notify
		// from another goroutine once it is free.
		go owner.queueReady(id)
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
	return v, StatusOK
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
