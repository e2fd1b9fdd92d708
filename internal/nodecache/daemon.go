package nodecache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/kube"
)

// Defaults for Options.
const (
	DefaultAddr           = ":9979"
	DefaultGracePeriod    = 10 * time.Minute
	DefaultMaxModuleBytes = 256 << 20
	DefaultMinRetry       = 250 * time.Millisecond
	DefaultMaxRetry       = 30 * time.Second
	// DefaultHeartbeatInterval is how often the daemon renews status.heartbeatTime; the
	// operator's default grace period (60s) lets two renewals fail before the node stops
	// counting.
	DefaultHeartbeatInterval = 20 * time.Second
	// DefaultVerifyInterval is how often every module on disk is hashed again.
	DefaultVerifyInterval = 10 * time.Minute
)

// Options configure a Daemon. Dir, NodeName, Config and Source are required.
type Options struct {
	// Dir holds the modules, one file per sha256 hex; it is the hostPath the sidecars mount.
	Dir string
	// NodeName is this node's name, and the name of the NodeCache the daemon writes.
	NodeName string
	// Config reaches the API server with the daemon's ServiceAccount.
	Config *rest.Config
	// Source delivers module bytes; in the cluster, a cacheprotocol.Client.
	Source Source
	// Addr is where modules, /metrics, /healthz and /readyz are served. Empty means DefaultAddr.
	Addr string
	// GracePeriod is how long a module the ModuleSet no longer lists stays on disk, so proxies
	// still loading it during a roll-out find it. Zero means DefaultGracePeriod; negative
	// removes such modules at once.
	GracePeriod time.Duration
	// MaxBytes caps the directory's size; over it, least recently used modules that no
	// the ModuleSet lists go first, before their grace period ends. Modules in use are
	// never evicted, so the directory can exceed the cap. Zero means no cap.
	MaxBytes int64
	// MaxModuleBytes is the largest module accepted. Zero means DefaultMaxModuleBytes.
	MaxModuleBytes int64
	// MinRetry and MaxRetry bound the exponential backoff between failed fetches of one
	// module and between failed reports. Zero means DefaultMinRetry and DefaultMaxRetry.
	MinRetry, MaxRetry time.Duration
	// HeartbeatInterval is how often status.heartbeatTime is renewed, so the operator can tell
	// a live daemon from one that died without reporting Ready=False. Zero means
	// DefaultHeartbeatInterval.
	HeartbeatInterval time.Duration
	// VerifyInterval is how often every module file is hashed again; one whose bytes no longer
	// hash to its name is removed (and fetched again if needed). The directory is verified at
	// every start too, before the first report. Zero means DefaultVerifyInterval.
	VerifyInterval time.Duration
	// Registry receives the daemon's metrics and is what /metrics serves. Nil means a new one.
	Registry *prometheus.Registry
	// Log is the daemon's logger.
	Log logr.Logger
}

// Daemon is one node's module cache: it watches the ModuleSet, keeps the modules it lists on
// disk, serves them to the node's proxies and reports in NodeCache/<node>.
type Daemon struct {
	opts    Options
	scheme  *k8sruntime.Scheme
	metrics *metrics
	store   *Store
	client  client.Client
	// moduleSet caches ModuleSet/cluster, the digests the node needs.
	moduleSet cache.Cache

	fetches singleflight.Group
	// runCtx ends when the daemon stops; downloads run under it (see fetchOnce).
	runCtx     context.Context
	syncKick   chan struct{}
	reportKick chan struct{}
	workersWG  sync.WaitGroup
	ready      atomic.Bool
	addr       atomic.Value // string, once listening
	// storeHook, set by tests before Run, adjusts the store (fault injection).
	storeHook func(*Store)

	mu        sync.Mutex
	modules   map[string]*module
	workers   map[string]*worker
	readyCond metav1.Condition
	owner     *metav1.OwnerReference
	// recorder emits an Event when a module becomes Ready or Failed, never on retries.
	recorder events.EventRecorder
	// regarding is this node's NodeCache, the object the Events are about.
	regarding *wasmev1.NodeCache
}

// module is the daemon's view of one digest, reported in status.modules.
type module struct {
	state   wasmev1.ModuleState
	size    int64
	message string
	since   metav1.Time
	// unneededSince is when the ModuleSet stopped listing it; zero while listed.
	unneededSince time.Time
}

type worker struct{ cancel context.CancelFunc }

// New checks the options and builds a Daemon; Run starts it.
func New(opts Options) (*Daemon, error) {
	switch {
	case opts.Dir == "":
		return nil, errors.New("the cache directory is required")
	case opts.NodeName == "":
		return nil, errors.New("the node name is required (set NODE_NAME from spec.nodeName)")
	case opts.Config == nil:
		return nil, errors.New("a Kubernetes client configuration is required")
	case opts.Source == nil:
		return nil, errors.New("a module source is required")
	case opts.MaxBytes < 0 || opts.MaxModuleBytes < 0 || opts.MinRetry < 0 || opts.MaxRetry < 0 ||
		opts.HeartbeatInterval < 0 || opts.VerifyInterval < 0:
		return nil, errors.New("size limits and intervals must not be negative")
	}
	if errs := validation.IsDNS1123Subdomain(opts.NodeName); len(errs) > 0 {
		return nil, fmt.Errorf("node name %q is not a valid object name: %v", opts.NodeName, errs)
	}
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if opts.GracePeriod == 0 {
		opts.GracePeriod = DefaultGracePeriod
	}
	if opts.MaxModuleBytes == 0 {
		opts.MaxModuleBytes = DefaultMaxModuleBytes
	}
	if opts.MinRetry == 0 {
		opts.MinRetry = DefaultMinRetry
	}
	if opts.MaxRetry == 0 {
		opts.MaxRetry = DefaultMaxRetry
	}
	if opts.HeartbeatInterval == 0 {
		opts.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if opts.VerifyInterval == 0 {
		opts.VerifyInterval = DefaultVerifyInterval
	}
	if opts.MaxRetry < opts.MinRetry {
		return nil, fmt.Errorf("the maximum retry interval %s is shorter than the minimum %s", opts.MaxRetry, opts.MinRetry)
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	m, err := newMetrics(opts.Registry)
	if err != nil {
		return nil, fmt.Errorf("registering metrics: %w", err)
	}
	scheme, err := kube.Scheme()
	if err != nil {
		return nil, err
	}
	return &Daemon{
		opts:       opts,
		scheme:     scheme,
		metrics:    m,
		syncKick:   make(chan struct{}, 1),
		reportKick: make(chan struct{}, 1),
		modules:    map[string]*module{},
		workers:    map[string]*worker{},
	}, nil
}

// Addr is the address the HTTP server listens on, empty until it does.
func (d *Daemon) Addr() string {
	a, _ := d.addr.Load().(string)
	return a
}

// Run rebuilds the store from the directory, starts watching the ModuleSet and serving,
// reports Ready, and keeps the directory in line with the ModuleSet until ctx ends.
// It then reports Ready=False, so the operator stops waiting for this node.
func (d *Daemon) Run(ctx context.Context) error {
	log := d.opts.Log
	store, scan, err := OpenStore(d.opts.Dir)
	if err != nil {
		return err
	}
	if d.storeHook != nil {
		d.storeHook(store)
	}
	d.store = store
	d.metrics.removals.WithLabelValues(reasonTemp).Add(float64(scan.tempRemoved))
	d.metrics.removals.WithLabelValues(reasonCorrupt).Add(float64(len(scan.corruptRemoved)))
	d.metrics.setTotals(store)
	log.Info("cache directory scanned", "dir", d.opts.Dir, "modules", scan.modules,
		"tempFilesRemoved", scan.tempRemoved, "corruptRemoved", scan.corruptRemoved, "ignored", scan.ignored)

	if d.client, err = client.New(d.opts.Config, client.Options{Scheme: d.scheme}); err != nil {
		return fmt.Errorf("creating a Kubernetes client: %w", err)
	}
	if err := d.lookUpNode(ctx); err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(d.opts.Config)
	if err != nil {
		return fmt.Errorf("creating a Kubernetes client: %w", err)
	}
	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: cs.EventsV1()})
	if err := broadcaster.StartRecordingToSinkWithContext(ctx); err != nil {
		return fmt.Errorf("starting the event recorder: %w", err)
	}
	// Shut down last, after the final transitions are recorded.
	defer broadcaster.Shutdown()
	d.recorder = broadcaster.NewRecorder(d.scheme, wasmev1.CacheFieldManager)
	d.regarding = &wasmev1.NodeCache{
		TypeMeta:   metav1.TypeMeta{APIVersion: wasmev1.GroupVersion.String(), Kind: "NodeCache"},
		ObjectMeta: metav1.ObjectMeta{Name: d.opts.NodeName},
	}
	// The NodeCache exists, without a Ready condition, before any module moves, so that every
	// transition has an object to be recorded against.
	if err := d.applyObject(ctx); err != nil {
		return err
	}
	if err := d.watchModuleSet(ctx); err != nil {
		return err
	}

	ln, err := net.Listen("tcp", d.opts.Addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", d.opts.Addr, err)
	}
	srv := &http.Server{Handler: d, ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	d.addr.Store(ln.Addr().String())
	log.Info("serving modules", "addr", ln.Addr().String())

	workCtx, stopWork := context.WithCancel(ctx)
	defer stopWork()
	d.runCtx = workCtx
	reportDone := make(chan struct{})
	go func() { defer close(reportDone); d.reportLoop(workCtx) }()
	verifyDone := make(chan struct{})
	go func() { defer close(verifyDone); d.verifyLoop(workCtx) }()

	nextGC := d.sync(workCtx)
	d.setReady(metav1.ConditionTrue, "Serving", "serving the cache directory on "+ln.Addr().String())
	d.ready.Store(true)

	gcTimer := time.NewTimer(time.Hour)
	gcTimer.Stop()
	var runErr error
loop:
	for {
		if !nextGC.IsZero() {
			gcTimer.Reset(time.Until(nextGC))
		}
		select {
		case <-ctx.Done():
			break loop
		case err := <-serveErr:
			runErr = fmt.Errorf("serving: %w", err)
			break loop
		case <-d.syncKick:
		case <-gcTimer.C:
		}
		gcTimer.Stop()
		nextGC = d.sync(workCtx)
	}

	d.ready.Store(false)
	stopWork()
	d.workersWG.Wait()
	<-reportDone
	<-verifyDone
	// The final report runs on its own deadline: ctx is already done.
	finalCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	d.setReady(metav1.ConditionFalse, "ShuttingDown", "the cache daemon is stopping")
	if err := d.apply(finalCtx, d.snapshot()); err != nil {
		log.Error(err, "reporting Ready=False on shutdown")
	}
	if err := srv.Shutdown(finalCtx); err != nil {
		runErr = errors.Join(runErr, fmt.Errorf("shutting down the server: %w", err))
	}
	return runErr
}

// lookUpNode finds Node/<name> so that the NodeCache is garbage collected with it.
func (d *Daemon) lookUpNode(ctx context.Context) error {
	var node corev1.Node
	err := d.client.Get(ctx, client.ObjectKey{Name: d.opts.NodeName}, &node)
	switch {
	case apierrors.IsNotFound(err):
		d.opts.Log.Info("no Node object with this name; the NodeCache will have no owner", "node", d.opts.NodeName)
		return nil
	case err != nil:
		return fmt.Errorf("reading Node %s: %w", d.opts.NodeName, err)
	}
	d.owner = &metav1.OwnerReference{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}
	return nil
}

// watchModuleSet starts an informer on ModuleSet/cluster, the operator's list of needed
// digests, whose every event asks for a sync: a new module is seen within the watch latency,
// with no polling, and none of the many FilterDeployment status writes of a rollout reaches
// the node.
func (d *Daemon) watchModuleSet(ctx context.Context) error {
	c, err := cache.New(d.opts.Config, cache.Options{
		Scheme:           d.scheme,
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&wasmev1.ModuleSet{}: {Field: fields.OneTermEqualSelector("metadata.name", wasmev1.ModuleSetName)},
		},
	})
	if err != nil {
		return fmt.Errorf("creating the ModuleSet cache: %w", err)
	}
	inf, err := c.GetInformer(ctx, &wasmev1.ModuleSet{})
	if err != nil {
		return fmt.Errorf("watching the ModuleSet: %w", err)
	}
	kick := func(any) { d.kick(d.syncKick) }
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    kick,
		UpdateFunc: func(_, obj any) { kick(obj) },
		DeleteFunc: kick,
	}); err != nil {
		return fmt.Errorf("watching the ModuleSet: %w", err)
	}
	go func() {
		if err := c.Start(ctx); err != nil {
			d.opts.Log.Error(err, "ModuleSet cache stopped")
		}
	}()
	if !c.WaitForCacheSync(ctx) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errors.New("the ModuleSet cache did not sync")
	}
	d.moduleSet = c
	return nil
}

func (d *Daemon) kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// neededDigests returns the hex digests the ModuleSet lists. Without a ModuleSet (the
// operator has not written one yet, or it was deleted and not yet restored) nothing is known
// to be unneeded: known is false and the directory is kept as it is.
func (d *Daemon) neededDigests(ctx context.Context) (needed map[string]bool, known bool, err error) {
	var set wasmev1.ModuleSet
	switch err := d.moduleSet.Get(ctx, client.ObjectKey{Name: wasmev1.ModuleSetName}, &set); {
	case apierrors.IsNotFound(err):
		return nil, false, nil
	case err != nil:
		return nil, false, fmt.Errorf("reading the ModuleSet: %w", err)
	}
	needed = map[string]bool{}
	for _, digest := range set.Spec.Digests {
		h, err := wasmev1.ModuleDigestHex(digest)
		if err != nil {
			d.opts.Log.Info("ignoring a digest of the ModuleSet", "digest", digest, "reason", err.Error())
			continue
		}
		needed[h] = true
	}
	return needed, true, nil
}

// sync brings the directory in line with the ModuleSet: it starts a fetch for every
// needed module not on disk, stops fetches no longer needed, and removes unneeded modules
// whose grace period ended or that the size cap pushes out. It returns when the next grace
// period ends (zero if none runs).
func (d *Daemon) sync(ctx context.Context) time.Time {
	needed, known, err := d.neededDigests(ctx)
	if err != nil {
		// The informer's cache cannot fail short of a bug; keep what we have.
		d.opts.Log.Error(err, "sync")
		return time.Time{}
	}
	now := time.Now()
	var nextGC time.Time
	changed := false
	d.mu.Lock()
	defer d.mu.Unlock()

	for _, f := range d.store.List() {
		if d.modules[f.hex] == nil {
			d.modules[f.hex] = &module{}
			changed = d.setState(d.modules[f.hex], f.hex, wasmev1.ModuleReady, f.size, "") || changed
		}
	}
	for h := range needed {
		m := d.modules[h]
		if m == nil {
			m = &module{}
			d.modules[h] = m
		}
		m.unneededSince = time.Time{}
		if size, ok := d.store.Has(h); ok {
			changed = d.setState(m, h, wasmev1.ModuleReady, size, "") || changed
			continue
		}
		if _, running := d.workers[h]; !running {
			if m.state != wasmev1.ModuleFailed {
				changed = d.setState(m, h, wasmev1.ModulePending, 0, "fetching") || changed
			}
			d.startWorker(ctx, h)
		}
	}
	for h, m := range d.modules {
		if needed[h] || !known {
			continue
		}
		if w, ok := d.workers[h]; ok {
			w.cancel()
			delete(d.workers, h)
		}
		if _, onDisk := d.store.Has(h); !onDisk {
			delete(d.modules, h)
			changed = true
			continue
		}
		if m.unneededSince.IsZero() {
			m.unneededSince = now
		}
		deadline := m.unneededSince.Add(d.opts.GracePeriod)
		if d.opts.GracePeriod < 0 || !now.Before(deadline) {
			changed = d.removeLocked(h, reasonGC) || changed
			continue
		}
		if nextGC.IsZero() || deadline.Before(nextGC) {
			nextGC = deadline
		}
	}
	changed = d.enforceSizeCapLocked() || changed
	d.metrics.setTotals(d.store)
	if changed {
		d.kick(d.reportKick)
	}
	return nextGC
}

// enforceSizeCapLocked evicts unneeded modules, least recently used first, while the directory
// is over MaxBytes.
func (d *Daemon) enforceSizeCapLocked() bool {
	if d.opts.MaxBytes == 0 {
		return false
	}
	_, total := d.store.Totals()
	if total <= d.opts.MaxBytes {
		return false
	}
	var candidates []held
	for _, f := range d.store.List() {
		if m := d.modules[f.hex]; m != nil && !m.unneededSince.IsZero() {
			candidates = append(candidates, f)
		}
	}
	sort.Slice(candidates, func(i, j int) bool { return candidates[i].lastUsed.Before(candidates[j].lastUsed) })
	changed := false
	for _, f := range candidates {
		if total <= d.opts.MaxBytes {
			break
		}
		if d.removeLocked(f.hex, reasonSizeCap) {
			total -= f.size
			changed = true
		}
	}
	return changed
}

func (d *Daemon) removeLocked(h, reason string) bool {
	if err := d.store.Remove(h); err != nil {
		d.opts.Log.Error(err, "removing a module", "digest", "sha256:"+h)
		return false
	}
	delete(d.modules, h)
	d.metrics.removals.WithLabelValues(reason).Inc()
	d.opts.Log.Info("module removed", "digest", "sha256:"+h, "reason", reason)
	return true
}

// setState records a module's state; the transition time moves only when the state changes.
// It reports whether anything changed.
func (d *Daemon) setState(m *module, h string, state wasmev1.ModuleState, size int64, msg string) bool {
	if m.state == state && m.size == size && m.message == msg {
		return false
	}
	if m.state != state {
		m.since = metav1.Now()
		d.opts.Log.Info("module state", "digest", "sha256:"+h, "state", state, "message", msg)
		d.event(h, state, msg)
	}
	m.state, m.size, m.message = state, size, msg
	return true
}

// event records a module's transition to Ready or Failed.
func (d *Daemon) event(h string, state wasmev1.ModuleState, msg string) {
	if d.recorder == nil || d.regarding.UID == "" {
		return
	}
	switch state {
	case wasmev1.ModuleReady:
		d.recorder.Eventf(d.regarding, nil, corev1.EventTypeNormal, "ModuleReady", "Cache", "sha256:%s is cached", h)
	case wasmev1.ModuleFailed:
		d.recorder.Eventf(d.regarding, nil, corev1.EventTypeWarning, "ModuleFailed", "Cache", "sha256:%s: %s", h, msg)
	}
}

func (d *Daemon) startWorker(ctx context.Context, h string) {
	wctx, cancel := context.WithCancel(ctx)
	w := &worker{cancel: cancel}
	d.workers[h] = w
	d.workersWG.Add(1)
	go d.fetchLoop(wctx, h, w)
}

// fetchLoop fetches one module until it is on disk, the daemon stops, or it is no longer
// needed, backing off exponentially between attempts.
func (d *Daemon) fetchLoop(ctx context.Context, h string, w *worker) {
	defer d.workersWG.Done()
	defer w.cancel()
	for attempt := 0; ; attempt++ {
		size, err := d.fetchOnce(ctx, h)
		d.mu.Lock()
		if d.workers[h] != w {
			// Superseded: the module is no longer needed; sync has dealt with its entry.
			d.mu.Unlock()
			if err == nil {
				d.kick(d.syncKick)
			}
			return
		}
		m := d.modules[h]
		if err == nil {
			delete(d.workers, h)
			d.setState(m, h, wasmev1.ModuleReady, size, "")
			d.metrics.setTotals(d.store)
			d.mu.Unlock()
			d.kick(d.reportKick)
			// The new file may push the directory over its size cap.
			d.kick(d.syncKick)
			return
		}
		if ctx.Err() != nil {
			d.mu.Unlock()
			return
		}
		d.setState(m, h, wasmev1.ModuleFailed, 0, err.Error())
		d.mu.Unlock()
		d.kick(d.reportKick)
		delay := backoff(attempt, d.opts.MinRetry, d.opts.MaxRetry)
		d.opts.Log.Info("fetching a module failed; retrying", "digest", "sha256:"+h, "error", err.Error(), "retryIn", delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// fetchOnce fetches, verifies and stores one module. Concurrent calls for one digest share a
// single download, which runs under the daemon's own context rather than the first caller's:
// a worker cancelled because the module stopped being needed must not hand its successor
// (the module needed again a moment later) a "context canceled" as the download's result,
// which would report the module Failed and record a Warning for nothing.
func (d *Daemon) fetchOnce(ctx context.Context, h string) (int64, error) {
	ch := d.fetches.DoChan(h, func() (any, error) {
		if size, ok := d.store.Has(h); ok {
			return size, nil
		}
		start := time.Now()
		size, result, err := d.download(d.runCtx, h)
		d.metrics.fetchDuration.Observe(time.Since(start).Seconds())
		d.metrics.fetches.WithLabelValues(result).Inc()
		return size, err
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return 0, res.Err
		}
		return res.Val.(int64), nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (d *Daemon) download(ctx context.Context, h string) (int64, string, error) {
	rc, err := d.opts.Source.Fetch(ctx, h)
	if err != nil {
		return 0, resultSource, err
	}
	defer rc.Close()
	body := &readErrRecorder{r: rc}
	size, err := d.store.Write(h, body, d.opts.MaxModuleBytes)
	switch {
	case err == nil:
		return size, resultSuccess, nil
	case body.err != nil:
		return 0, resultSource, fmt.Errorf("reading from the source: %w", body.err)
	case errors.Is(err, ErrDigestMismatch):
		return 0, resultMismatch, err
	case errors.Is(err, ErrTooLarge):
		return 0, resultTooLarge, err
	}
	return 0, resultWrite, fmt.Errorf("writing to %s: %w", d.opts.Dir, err)
}

// readErrRecorder tells a failing source apart from a failing disk.
type readErrRecorder struct {
	r   io.Reader
	err error
}

func (r *readErrRecorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		r.err = err
	}
	return n, err
}

// backoff is min·2^attempt, capped at max, with up to 20% jitter so that nodes that failed
// together do not retry together.
func backoff(attempt int, minD, maxD time.Duration) time.Duration {
	d := minD
	for i := 0; i < attempt && d < maxD; i++ {
		d *= 2
	}
	d = min(d, maxD)
	return d - time.Duration(rand.Int64N(int64(d)/5+1))
}

func (d *Daemon) setReady(status metav1.ConditionStatus, reason, msg string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.readyCond.Status != status {
		d.readyCond.LastTransitionTime = metav1.Now()
	}
	d.readyCond.Type = wasmev1.ReadyCondition
	d.readyCond.Status, d.readyCond.Reason, d.readyCond.Message = status, reason, msg
	d.kick(d.reportKick)
}

// verifyLoop hashes every module file again every VerifyInterval. The sidecars mount the
// directory read-only, but anything else on the node with write access to the hostPath could
// still change a file under a module's name; Envoy would then load bytes nobody validated.
func (d *Daemon) verifyLoop(ctx context.Context) {
	t := time.NewTicker(d.opts.VerifyInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n := d.verify(ctx); n > 0 {
			// Needed modules that were removed are fetched again by the next sync.
			d.kick(d.syncKick)
		}
	}
}

// verify hashes every held module and removes those whose bytes do not hash to their name (or
// that are gone or unreadable), returning how many it removed.
func (d *Daemon) verify(ctx context.Context) int {
	removed := 0
	for _, f := range d.store.List() {
		if ctx.Err() != nil {
			return removed
		}
		ok, err := d.store.Verify(f.hex)
		if ok {
			continue
		}
		reason := "its bytes no longer hash to its name"
		if err != nil {
			reason = err.Error()
		}
		d.mu.Lock()
		if _, held := d.store.Has(f.hex); held && d.removeLocked(f.hex, reasonCorrupt) {
			removed++
			d.opts.Log.Info("removed a module that failed re-verification", "digest", "sha256:"+f.hex, "reason", reason)
		}
		d.metrics.setTotals(d.store)
		d.mu.Unlock()
	}
	if removed > 0 {
		d.kick(d.reportKick)
	}
	return removed
}
