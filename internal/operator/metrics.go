package operator

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/validation"
	"wasme.io/wasme/pkg/wasmimage"
)

// The operator's metrics, served with controller-runtime's on --metrics-bind-address; the list
// with their meaning is docs/metrics.md. They are process-wide (one registry), like
// controller-runtime's own.
var (
	mReady = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "wasme_filterdeployment_ready",
		Help: "1 when the FilterDeployment's Ready condition is True, else 0.",
	}, []string{"namespace", "name"})
	mProgrammed = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "wasme_filterdeployment_programmed_proxies",
		Help: "Proxies of the selected pods that ACKed the configuration with the filter, as istiod reports.",
	}, []string{"namespace", "name"})
	mProxies = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "wasme_filterdeployment_proxies",
		Help: "Pods of the selected workloads (each should run one proxy with the filter).",
	}, []string{"namespace", "name"})
	mApplyToProgrammed = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "wasme_filterdeployment_apply_to_programmed_seconds",
		Help: "Time from the operator first seeing a rollout (a new generation or module) to Programmed=True for it.",
		// From a second (one istiod push) to ten minutes (a slow rolling update).
		Buckets: []float64{1, 2, 5, 10, 20, 30, 60, 120, 300, 600},
	}, []string{"delivery"})
	mFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wasme_filterdeployment_failures_total",
		Help: "Reconcile passes that failed or stalled, by the Ready condition's reason.",
	}, []string{"reason"})
	mValidation = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "wasme_module_validation_seconds",
		Help:    "Time of one module validation (a child process running the filter's start and configure), by result.",
		Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30},
	}, []string{"result"})
	mPulls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wasme_registry_pulls_total",
		Help: "Image pulls from registries (cache misses of the operator), by result.",
	}, []string{"result"})
	mProxyQueries = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "wasme_istiod_proxy_status_queries_total",
		Help: "syncz queries sent to istiod for its per-proxy state.",
	})
	mProxyQueryErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "wasme_istiod_proxy_status_errors_total",
		Help: "syncz queries to istiod that failed.",
	})
	registerOnce sync.Once
)

func registerMetrics() {
	registerOnce.Do(func() {
		ctrlmetrics.Registry.MustRegister(mReady, mProgrammed, mProxies, mApplyToProgrammed, mFailures, mValidation, mPulls,
			mProxyQueries, mProxyQueryErrors)
	})
}

// pullResult names a pull's outcome for wasme_registry_pulls_total.
func pullResult(err error) string {
	var na *wasmimage.NotAllowedError
	switch {
	case err == nil:
		return "success"
	case errors.As(err, &na):
		return "not_allowed"
	case errors.Is(err, wasmimage.ErrUnauthorized):
		return "unauthorized"
	case errors.Is(err, wasmimage.ErrNotFound):
		return "not_found"
	case errors.Is(err, wasmimage.ErrUnreachable):
		return "unreachable"
	}
	return "invalid"
}

// validationResult names a validation's outcome for wasme_module_validation_seconds.
func validationResult(err error) string {
	var le *validation.LimitError
	switch {
	case err == nil:
		return "valid"
	case errors.As(err, &le):
		return "limit"
	}
	return "invalid"
}

// metrics keeps what the rollout histogram needs: when each FilterDeployment's current rollout
// started, and whether it was observed.
type metrics struct {
	mu       sync.Mutex
	rollouts map[types.UID]rollout
}

type rollout struct {
	key      string
	start    time.Time
	observed bool
}

func newMetrics() *metrics {
	registerMetrics()
	return &metrics{rollouts: map[types.UID]rollout{}}
}

// record sets the gauges of fd and observes its rollout once Programmed is True for it. A
// rollout is a generation with a module: the operator's first sight of that pair starts it.
// An operator that restarts mid-rollout starts the clock again (the histogram then undercounts
// that rollout's time; it never observes one twice in one process).
func (m *metrics) record(fd *wasmev1.FilterDeployment) {
	if m == nil {
		return
	}
	ready := 0.0
	if apimeta.IsStatusConditionTrue(fd.Status.Conditions, wasmev1.ReadyCondition) {
		ready = 1
	}
	mReady.WithLabelValues(fd.Namespace, fd.Name).Set(ready)
	var prog, total int
	if _, err := fmt.Sscanf(fd.Status.ProxiesProgrammed, "%d/%d", &prog, &total); err != nil {
		prog, total = 0, 0
	}
	mProgrammed.WithLabelValues(fd.Namespace, fd.Name).Set(float64(prog))
	mProxies.WithLabelValues(fd.Namespace, fd.Name).Set(float64(total))

	key := fmt.Sprintf("%d/%s", fd.Generation, fd.Status.ModuleDigest)
	c := apimeta.FindStatusCondition(fd.Status.Conditions, wasmev1.ProgrammedCondition)
	programmed := c != nil && c.Status == metav1.ConditionTrue && c.ObservedGeneration == fd.Generation &&
		fd.Status.ModuleDigest != "" && fd.Status.DeployedModuleDigest == fd.Status.ModuleDigest
	m.mu.Lock()
	defer m.mu.Unlock()
	ro, ok := m.rollouts[fd.UID]
	switch {
	case !ok:
		// First sight in this process: a rollout already programmed is not timed (its start is
		// not known here).
		ro = rollout{key: key, start: time.Now(), observed: programmed}
	case ro.key != key:
		ro = rollout{key: key, start: time.Now()}
	}
	if !ro.observed && programmed {
		mApplyToProgrammed.WithLabelValues(string(fd.Status.Delivery)).Observe(time.Since(ro.start).Seconds())
		ro.observed = true
	}
	m.rollouts[fd.UID] = ro
}

// forget drops a deleted FilterDeployment's series.
func (m *metrics) forget(fd *wasmev1.FilterDeployment) {
	if m == nil {
		return
	}
	mReady.DeleteLabelValues(fd.Namespace, fd.Name)
	mProgrammed.DeleteLabelValues(fd.Namespace, fd.Name)
	mProxies.DeleteLabelValues(fd.Namespace, fd.Name)
	m.mu.Lock()
	delete(m.rollouts, fd.UID)
	m.mu.Unlock()
}
