//go:build wasip1

// Command tick-counter shows timers and shared data (root id "tick_counter"). Every request
// increments a counter kept in the VM's shared data (compare-and-swap, so concurrent VMs do
// not lose counts); every tick publishes the count. Responses carry both:
//
//	x-request-count:   requests counted so far, this one included
//	x-published-count: the count as of the last tick
//
// Configuration: {"tick_ms": 100} (default 1000).
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"strconv"

	"wasme.io/wasme/examples/filters/internal/proxywasm"
)

func main() {}

func init() {
	proxywasm.RegisterRoot("tick_counter", func(uint32) proxywasm.RootContext { return &root{} })
}

const (
	countKey     = "tick-counter/requests"
	publishedKey = "tick-counter/published"
)

type root struct{ proxywasm.DefaultRoot }

func (r *root) OnConfigure(int) bool {
	c := struct {
		TickMS uint32 `json:"tick_ms"`
	}{TickMS: 1000}
	if data, _ := proxywasm.GetBuffer(proxywasm.PluginConfiguration); len(bytes.TrimSpace(data)) > 0 {
		if err := json.Unmarshal(data, &c); err != nil || c.TickMS == 0 {
			proxywasm.Log(proxywasm.LogError, `tick-counter: configuration must be JSON like {"tick_ms":100}`)
			return false
		}
	}
	if err := proxywasm.SetTickPeriod(c.TickMS); err != nil {
		proxywasm.Log(proxywasm.LogError, "tick-counter: "+err.Error())
		return false
	}
	return true
}

func (r *root) OnTick() {
	n, _ := read(countKey)
	_ = proxywasm.SetSharedData(publishedKey, binary.LittleEndian.AppendUint64(nil, n), 0)
}

func read(key string) (uint64, uint32) {
	v, cas, err := proxywasm.GetSharedData(key)
	if err != nil || len(v) != 8 {
		return 0, cas
	}
	return binary.LittleEndian.Uint64(v), cas
}

// increment adds one to the shared counter, retrying when another VM won the race.
func increment() uint64 {
	for range 100 {
		n, cas := read(countKey)
		n++
		err := proxywasm.SetSharedData(countKey, binary.LittleEndian.AppendUint64(nil, n), cas)
		if err == nil {
			return n
		}
		if err != proxywasm.StatusCasMismatch {
			break
		}
	}
	return 0
}

func (r *root) NewHTTPContext(uint32) proxywasm.HTTPContext { return &stream{} }

type stream struct {
	proxywasm.DefaultHTTP
	count uint64
}

func (s *stream) OnRequestHeaders(int, bool) proxywasm.Action {
	s.count = increment()
	return proxywasm.Continue
}

func (s *stream) OnResponseHeaders(int, bool) proxywasm.Action {
	published, _ := read(publishedKey)
	_ = proxywasm.ReplaceHeader(proxywasm.ResponseHeaders, "x-request-count", strconv.FormatUint(s.count, 10))
	_ = proxywasm.ReplaceHeader(proxywasm.ResponseHeaders, "x-published-count", strconv.FormatUint(published, 10))
	return proxywasm.Continue
}
