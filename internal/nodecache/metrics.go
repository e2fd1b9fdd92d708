package nodecache

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Fetch results, the "result" label of wasme_cache_fetches_total.
const (
	resultSuccess  = "success"
	resultMismatch = "digest_mismatch"
	resultTooLarge = "too_large"
	resultSource   = "source_error"
	resultWrite    = "write_error"
)

// Removal reasons, the "reason" label of wasme_cache_removals_total.
const (
	reasonGC      = "unused"
	reasonSizeCap = "size_cap"
	reasonCorrupt = "corrupt"
	reasonTemp    = "temp_file"
)

// metrics of one daemon, all prefixed wasme_cache_. They live in the daemon's own registry so
// several daemons in one process (tests) do not mix their counts.
type metrics struct {
	modules       prometheus.Gauge
	bytes         prometheus.Gauge
	fetches       *prometheus.CounterVec
	fetchDuration prometheus.Histogram
	serves        *prometheus.CounterVec
	servedBytes   prometheus.Counter
	removals      *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		modules: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wasme_cache_modules",
			Help: "Verified modules on this node's disk.",
		}),
		bytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wasme_cache_bytes",
			Help: "Total size of the modules on this node's disk.",
		}),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wasme_cache_fetches_total",
			Help: "Module fetch attempts by result: success, digest_mismatch, too_large, source_error, write_error.",
		}, []string{"result"}),
		fetchDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "wasme_cache_fetch_duration_seconds",
			Help:    "Duration of module fetch attempts, download, verification and write included.",
			Buckets: prometheus.ExponentialBuckets(0.005, 4, 8),
		}),
		serves: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wasme_cache_serves_total",
			Help: "Module requests from proxies on the node, by HTTP status code.",
		}, []string{"code"}),
		servedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wasme_cache_served_bytes_total",
			Help: "Module bytes sent to proxies on the node.",
		}),
		removals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wasme_cache_removals_total",
			Help: "Files removed from the cache directory by reason: unused, size_cap, corrupt, temp_file.",
		}, []string{"reason"}),
	}
	for _, c := range []prometheus.Collector{m.modules, m.bytes, m.fetches, m.fetchDuration, m.serves, m.servedBytes, m.removals} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// setTotals updates the gauges from the store.
func (m *metrics) setTotals(s *Store) {
	n, b := s.Totals()
	m.modules.Set(float64(n))
	m.bytes.Set(float64(b))
}
