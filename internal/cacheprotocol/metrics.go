package cacheprotocol

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics of the module server, all prefixed wasme_moduleserver_.
type metrics struct {
	requests      *prometheus.CounterVec
	servedBytes   prometheus.Counter
	fetches       *prometheus.CounterVec
	fetchDuration prometheus.Histogram
	storeEntries  prometheus.Gauge
	storeBytes    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wasme_moduleserver_requests_total",
			Help: "Module requests from node caches, by HTTP status code.",
		}, []string{"code"}),
		servedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wasme_moduleserver_served_bytes_total",
			Help: "Module bytes sent to node caches.",
		}),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wasme_moduleserver_fetches_total",
			Help: "Fallback pulls of modules this replica did not hold, by result (success, error).",
		}, []string{"result"}),
		fetchDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "wasme_moduleserver_fetch_duration_seconds",
			Help:    "Duration of fallback pulls, including verification.",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 8),
		}),
		storeEntries: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wasme_moduleserver_store_modules",
			Help: "Modules held in the operator's in-memory store.",
		}),
		storeBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wasme_moduleserver_store_bytes",
			Help: "Bytes held in the operator's in-memory store.",
		}),
	}
	var err error
	m.requests = register(reg, m.requests, &err)
	m.servedBytes = register(reg, m.servedBytes, &err)
	m.fetches = register(reg, m.fetches, &err)
	m.fetchDuration = register(reg, m.fetchDuration, &err)
	m.storeEntries = register(reg, m.storeEntries, &err)
	m.storeBytes = register(reg, m.storeBytes, &err)
	return m, err
}

// register registers c, or returns the collector already registered under its name, so that a
// second Server in one process (tests, a restarted runnable) shares the metrics.
func register[C prometheus.Collector](reg prometheus.Registerer, c C, errp *error) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		*errp = errors.Join(*errp, err)
	}
	return c
}
