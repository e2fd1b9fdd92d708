package operator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	networkingv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/istio"
)

// Image is a filter image as the operator needs it.
type Image struct {
	// ManifestDigest is the digest the reference resolved to ("sha256:...").
	ManifestDigest string
	// ModuleDigest is the sha256 of the module ("sha256:...").
	ModuleDigest string
	// Module is the .wasm bytes.
	Module []byte
	// RootIDs are the root ids of the image's runtime config, the first being the default.
	RootIDs []string
}

// PullOptions say how to reach a registry for one FilterDeployment.
type PullOptions struct {
	// DockerConfigJSON is a kubernetes.io/dockerconfigjson Secret's .dockerconfigjson.
	DockerConfigJSON []byte
	// Username and Password are the original's pull secret keys.
	Username, Password string
	// PlainHTTP and InsecureSkipVerify are spec.filter.imagePullOptions'.
	PlainHTTP, InsecureSkipVerify bool
}

// ImageSource resolves and fetches filter images; pkg/wasmimage in production.
type ImageSource interface {
	// Resolve returns the manifest digest ref points at now.
	Resolve(ctx context.Context, ref string, opts PullOptions) (string, error)
	// Fetch pulls ref (pinned to a manifest digest when the caller has one) and its module.
	Fetch(ctx context.Context, ref string, opts PullOptions) (*Image, error)
}

// Validator checks that a module runs and accepts its configuration: magic, ABI exports, and
// the filter's own proxy_on_vm_start / proxy_on_configure.
type Validator func(ctx context.Context, module []byte, rootID string, config []byte) error

// ModuleStore holds the bytes of the modules the operator pulled, by digest "sha256:<hex>",
// byte-bounded: the reconciler validates from it and the module server serves the node caches
// from it (cacheprotocol.Server). A module it dropped is pulled again.
type ModuleStore interface {
	Put(digest string, module []byte) error
	Get(digest string) ([]byte, bool)
}

// FilterDeploymentReconciler turns FilterDeployments into workload annotations and
// EnvoyFilters, once the node caches hold the module.
type FilterDeploymentReconciler struct {
	client.Client
	// APIReader reads what must not be cached: pull Secrets.
	APIReader client.Reader
	Recorder  events.EventRecorder
	Images    ImageSource
	Validate  Validator
	Modules   ModuleStore
	// ResolveInterval is how often a tag is resolved again, so a re-pushed tag rolls out.
	ResolveInterval time.Duration
	// CacheReportDelay gathers node cache reports: the passes (and status writes) they cause
	// come at most once per delay for each FilterDeployment, however many nodes report at once.
	// Zero means every report causes its own pass.
	CacheReportDelay time.Duration
	// CacheHeartbeatGrace is how long a node cache may go without renewing its heartbeat and
	// still count; zero means DefaultCacheHeartbeatGrace (see cache.go).
	CacheHeartbeatGrace time.Duration
	// AllowInsecureRegistries allows imagePullOptions.plainHttp and insecureSkipVerify in
	// every namespace, not only in those labelled AllowInsecureRegistriesLabel=true.
	AllowInsecureRegistries bool
	// CacheDir is the node cache's directory (the DaemonSet's hostPath), which the sidecars
	// mount and the EnvoyFilters name; empty means wasmev1.CacheDir.
	CacheDir string
	// ModuleURLBase is the node-local cache Service istio-agent fetches modules from in ECDS
	// delivery; empty means DefaultModuleURLBase.
	ModuleURLBase string

	// Proxies is istiod's per-proxy state, which Programmed is computed from; nil turns
	// proxy tracking off (Programmed is then Unknown).
	Proxies ProxyStatus

	images *imageCache
	// proxyEvents brings the passes that istiod's proxy state changes cause.
	proxyEvents chan event.TypedGenericEvent[*wasmev1.FilterDeployment]
	metrics     *metrics
	// Signatures verifies image signatures; nil means Images, when it is a SignatureVerifier.
	Signatures SignatureVerifier
	// PolicyNamespace is where FilterPolicies' keys are read: the operator's namespace (empty
	// means "wasme"), which tenants cannot write.
	PolicyNamespace string

	verified verifiedCache

	// watchEnvoyFilters starts the EnvoyFilter watch; envoyFiltersWatched says it ran.
	watchEnvoyFilters   func() error
	watchMu             sync.Mutex
	envoyFiltersWatched bool
}

func (r *FilterDeploymentReconciler) cacheDir() string { return cmp.Or(r.CacheDir, wasmev1.CacheDir) }

// DefaultModuleURLBase is the wasme-cache Service of the installation's namespace: with
// internalTrafficPolicy Local it reaches the node cache of the node the fetching pod runs on.
const DefaultModuleURLBase = "http://wasme-cache.wasme.svc:9979"

func (r *FilterDeploymentReconciler) moduleURLBase() string {
	return cmp.Or(r.ModuleURLBase, DefaultModuleURLBase)
}

// pass carries what the steps of one reconcile pass learned and later steps read.
type pass struct {
	// version is the Istio version reconcileIstio found, and shape its EnvoyFilter form.
	version istio.Version
	shape   istio.Shape
	// delivery is mount or ecds, as reconcileIstio settled it.
	delivery wasmev1.Delivery
	// applied are the workloads whose EnvoyFilter reconcileWorkloads wrote or found as wanted.
	applied []workload
	// reachedWorkloads: reconcileWorkloads ran.
	reachedWorkloads bool
}

// step is one ordered part of a pass; its error says how the pass ended (see result.go).
type step func(context.Context, *wasmev1.FilterDeployment, *pass) (stepResult, error)

// SetupWithManager registers the reconciler and its watches.
func (r *FilterDeploymentReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.ResolveInterval == 0 {
		r.ResolveInterval = 5 * time.Minute
	}
	r.images = newImageCache(64)
	r.metrics = newMetrics()
	inNamespace := handler.EnqueueRequestsFromMapFunc(r.filterDeploymentsInNamespace)
	r.proxyEvents = make(chan event.TypedGenericEvent[*wasmev1.FilterDeployment], 256)
	c, err := ctrl.NewControllerManagedBy(mgr).
		For(&wasmev1.FilterDeployment{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}, deletionPredicate{}))).
		// A FilterDeployment that comes, goes or changes phase or priority shifts the chain
		// position of those it ties with (see istio.ChainPriority).
		Watches(&wasmev1.FilterDeployment{}, handler.EnqueueRequestsFromMapFunc(r.tiedFilterDeployments),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&appsv1.Deployment{}, inNamespace, builder.WithPredicates(workloadPredicate{})).
		Watches(&appsv1.DaemonSet{}, inNamespace, builder.WithPredicates(workloadPredicate{})).
		Watches(&appsv1.StatefulSet{}, inNamespace, builder.WithPredicates(workloadPredicate{})).
		Watches(&wasmev1.NodeCache{}, coalesced(r.filterDeploymentsWaitingForCache, r.CacheReportDelay),
			builder.WithPredicates(nodeCachePredicate{grace: r.cacheGrace})).
		// Pods only count (and only by their metadata) for the proxies: one that comes or goes
		// changes a workload's total; istiod's state changes come through proxyEvents.
		Watches(&corev1.Pod{}, inNamespace, builder.OnlyMetadata, builder.WithPredicates(podPredicate{})).
		WatchesRawSource(source.Channel(r.proxyEvents, &handler.TypedEnqueueRequestForObject[*wasmev1.FilterDeployment]{})).
		// Policies and the ConfigMaps and Secrets holding public keys: a change re-verifies at
		// once. Both are watched as metadata only (see verify.go).
		Watches(&wasmev1.FilterPolicy{}, handler.EnqueueRequestsFromMapFunc(r.allFilterDeployments)).
		WatchesMetadata(&corev1.ConfigMap{}, handler.EnqueueRequestsFromMapFunc(r.filterDeploymentsForKeys("ConfigMap")),
			builder.WithPredicates(predicate.ResourceVersionChangedPredicate{})).
		WatchesMetadata(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.filterDeploymentsForKeys("Secret")),
			builder.WithPredicates(predicate.ResourceVersionChangedPredicate{})).
		Named("filterdeployment").
		// Failures back off from a quarter second to two minutes at most (not the default 16
		// minutes), so a registry or API outage heals soon after it ends.
		WithOptions(controller.Options{
			RateLimiter: workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](250*time.Millisecond, 2*time.Minute),
			// FilterDeployments are independent; the queue never hands one to two workers.
			MaxConcurrentReconciles: 4,
		}).
		Build(r)
	if err != nil {
		return err
	}
	// EnvoyFilters are watched once Istio's API exists: an operator started before Istio must
	// report that in status, not fail to start (see reconcileIstio).
	r.watchEnvoyFilters = func() error {
		return c.Watch(source.Kind(mgr.GetCache(), &networkingv1alpha3.EnvoyFilter{},
			handler.TypedEnqueueRequestForOwner[*networkingv1alpha3.EnvoyFilter](mgr.GetScheme(), mgr.GetRESTMapper(),
				&wasmev1.FilterDeployment{}, handler.OnlyControllerOwner())))
	}
	return nil
}

// Reconcile brings one FilterDeployment's workloads and EnvoyFilters to its spec.
func (r *FilterDeploymentReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	fd := &wasmev1.FilterDeployment{}
	if err := r.Get(ctx, req.NamespacedName, fd); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !fd.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.reconcileDelete(ctx, fd)
	}
	if !controllerutil.ContainsFinalizer(fd, wasmev1.Finalizer) {
		patch := client.MergeFrom(fd.DeepCopy())
		controllerutil.AddFinalizer(fd, wasmev1.Finalizer)
		if err := r.Patch(ctx, fd, patch); err != nil {
			return ctrl.Result{}, fmt.Errorf("adding finalizer: %w", err)
		}
	}

	orig := fd.DeepCopy()
	var res stepResult
	var stepErr error
	defer func() {
		o := outcomeOf(res, stepErr)
		if err := r.summarize(ctx, orig, fd, o); err != nil {
			retErr = errors.Join(retErr, err)
		}
		if retErr == nil {
			retErr = o.retErr
		}
		if retErr == nil {
			result.RequeueAfter = o.requeueAfter
		}
	}()

	p := &pass{}
	defer func() {
		// Before the summary's status write: Programmed is read from istiod for what this pass
		// applied.
		var applied []workload
		if p.reachedWorkloads {
			applied = p.applied
			if applied == nil {
				applied = []workload{}
			}
		}
		r.reconcileProxies(ctx, fd, applied, p.delivery)
	}()
	for _, s := range []step{r.reconcileImage, r.reconcileIstio, r.reconcileCache, r.reconcileWorkloads} {
		sr, err := s(ctx, fd, p)
		res = res.merge(sr)
		if err != nil {
			stepErr = err
			break
		}
	}
	// In ECDS delivery the mount goes only once every selected workload has its ECDS filter.
	ecdsLive := stepErr == nil && p.delivery == wasmev1.DeliveryECDS
	// Releasing workloads no FilterDeployment selects any more depends on nothing above: a
	// relabelled workload is released even while the image fails or the caches fill.
	if err := r.reconcileRelease(ctx, fd, ecdsLive); err != nil {
		stepErr = errors.Join(stepErr, failed(wasmev1.WorkloadFailedReason, err))
	}
	return ctrl.Result{}, nil
}

// summarize sets the conditions from the pass's outcome and writes the status once, if it
// changed. observedGeneration moves only once the generation is handled: done, or stalled.
func (r *FilterDeploymentReconciler) summarize(ctx context.Context, orig, fd *wasmev1.FilterDeployment, o outcome) error {
	st := &fd.Status
	gen := fd.Generation
	if o.handled {
		st.ObservedGeneration = gen
	}
	ok, total := 0, len(st.Workloads)
	for _, w := range st.Workloads {
		if w.State == wasmev1.WorkloadSucceeded {
			ok++
		}
	}
	st.WorkloadsReady = fmt.Sprintf("%d/%d", ok, total)

	switch o.reason {
	case "":
		st.Reason = ""
		apimeta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: wasmev1.ReadyCondition, Status: metav1.ConditionTrue,
			Reason: wasmev1.SucceededReason, Message: fmt.Sprintf("filter on %d/%d workloads", ok, total), ObservedGeneration: gen})
		apimeta.RemoveStatusCondition(&st.Conditions, wasmev1.ReconcilingCondition)
		apimeta.RemoveStatusCondition(&st.Conditions, wasmev1.StalledCondition)
	default:
		message := truncate(o.message, maxMessageBytes)
		st.Reason = message
		apimeta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: wasmev1.ReadyCondition, Status: metav1.ConditionFalse,
			Reason: o.reason, Message: message, ObservedGeneration: gen})
		abnormal, other := wasmev1.ReconcilingCondition, wasmev1.StalledCondition
		if o.stalled {
			abnormal, other = other, abnormal
		}
		apimeta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: abnormal, Status: metav1.ConditionTrue,
			Reason: o.reason, Message: message, ObservedGeneration: gen})
		apimeta.RemoveStatusCondition(&st.Conditions, other)
	}

	r.metrics.record(fd)
	if o.stalled || o.retErr != nil {
		mFailures.WithLabelValues(o.reason).Inc()
	}

	if equality.Semantic.DeepEqual(orig.Status, fd.Status) {
		return nil
	}
	r.notify(orig, fd)
	if err := r.Status().Patch(ctx, fd, client.MergeFrom(orig)); err != nil {
		return client.IgnoreNotFound(fmt.Errorf("writing status: %w", err))
	}
	return nil
}

// notify records an event when Ready changes status or reason, never on a repeat.
func (r *FilterDeploymentReconciler) notify(orig, fd *wasmev1.FilterDeployment) {
	before := apimeta.FindStatusCondition(orig.Status.Conditions, wasmev1.ReadyCondition)
	after := apimeta.FindStatusCondition(fd.Status.Conditions, wasmev1.ReadyCondition)
	if r.Recorder == nil || after == nil || (before != nil && before.Status == after.Status && before.Reason == after.Reason) {
		return
	}
	kind := corev1.EventTypeNormal
	if after.Status != metav1.ConditionTrue && after.Reason != wasmev1.CachePendingReason {
		kind = corev1.EventTypeWarning
	}
	r.Recorder.Eventf(fd, nil, kind, after.Reason, "Reconcile", "%s", after.Message)
}

// filterDeploymentsInNamespace maps a workload (or istiod) change to the FilterDeployments
// that may select it. istiod changes reach every FilterDeployment that reads that namespace.
func (r *FilterDeploymentReconciler) filterDeploymentsInNamespace(ctx context.Context, o client.Object) []reconcile.Request {
	var list wasmev1.FilterDeploymentList
	if err := r.List(ctx, &list); err != nil {
		return nil
	}
	var reqs []reconcile.Request
	for _, fd := range list.Items {
		if fd.Namespace == o.GetNamespace() || fd.Spec.Deployment.Istio.IstioNamespace == o.GetNamespace() {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&fd)})
		}
	}
	return reqs
}

// tiedFilterDeployments maps a FilterDeployment to the others of its namespace with the same
// phase and priority, whose EnvoyFilter priorities depend on it.
func (r *FilterDeploymentReconciler) tiedFilterDeployments(ctx context.Context, o client.Object) []reconcile.Request {
	changed, ok := o.(*wasmev1.FilterDeployment)
	if !ok {
		return nil
	}
	var list wasmev1.FilterDeploymentList
	if err := r.List(ctx, &list, client.InNamespace(o.GetNamespace())); err != nil {
		return nil
	}
	var reqs []reconcile.Request
	k := chainKey(changed)
	for i := range list.Items {
		fd := &list.Items[i]
		if ok := chainKey(fd); fd.UID != changed.UID && ok.Phase == k.Phase && ok.Priority == k.Priority {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(fd)})
		}
	}
	return reqs
}

// filterDeploymentsWaitingForCache maps a node cache report to the FilterDeployments whose
// module it lists, and to those not ready (a node that came or went changes their count).
func (r *FilterDeploymentReconciler) filterDeploymentsWaitingForCache(ctx context.Context, o client.Object) []reconcile.Request {
	var list wasmev1.FilterDeploymentList
	if err := r.List(ctx, &list); err != nil {
		return nil
	}
	var reqs []reconcile.Request
	for _, fd := range list.Items {
		if fd.Status.CachedNodes != fd.Status.CacheNodes || !apimeta.IsStatusConditionTrue(fd.Status.Conditions, wasmev1.ReadyCondition) ||
			listsModule(o.(*wasmev1.NodeCache), fd.Status.ModuleDigest) {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&fd)})
		}
	}
	return reqs
}

func listsModule(nc *wasmev1.NodeCache, digest string) bool {
	for _, m := range nc.Status.Modules {
		if m.Digest == digest {
			return true
		}
	}
	return false
}

// coalesced enqueues what fn maps an event to after delay, so that events within one delay
// cause one pass: the work queue keeps a key once, at its earliest time.
func coalesced(fn handler.MapFunc, delay time.Duration) handler.EventHandler {
	if delay <= 0 {
		return handler.EnqueueRequestsFromMapFunc(fn)
	}
	add := func(ctx context.Context, o client.Object, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		for _, req := range fn(ctx, o) {
			q.AddAfter(req, delay)
		}
	}
	return handler.Funcs{
		CreateFunc: func(ctx context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			add(ctx, e.Object, q)
		},
		UpdateFunc: func(ctx context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			add(ctx, e.ObjectOld, q)
			add(ctx, e.ObjectNew, q)
		},
		DeleteFunc: func(ctx context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			add(ctx, e.Object, q)
		},
	}
}

// deletionPredicate lets through the update that marks a FilterDeployment for deletion,
// which changes neither its generation nor its annotations.
type deletionPredicate struct{ predicate.Funcs }

func (deletionPredicate) Update(e event.UpdateEvent) bool {
	return e.ObjectNew.GetDeletionTimestamp() != nil
}

// podPredicate passes pods that come, go or change labels (which select them): their status
// churn is no business of the FilterDeployments.
type podPredicate struct{ predicate.Funcs }

func (podPredicate) Update(e event.UpdateEvent) bool {
	return !equality.Semantic.DeepEqual(e.ObjectOld.GetLabels(), e.ObjectNew.GetLabels()) ||
		(e.ObjectOld.GetDeletionTimestamp() == nil) != (e.ObjectNew.GetDeletionTimestamp() == nil)
}

// workloadPredicate ignores workload status churn (replica counts): only metadata and spec
// changes can change selection, annotations or EnvoyFilters.
type workloadPredicate struct{ predicate.Funcs }

func (workloadPredicate) Update(e event.UpdateEvent) bool {
	return e.ObjectOld.GetGeneration() != e.ObjectNew.GetGeneration() ||
		!equality.Semantic.DeepEqual(e.ObjectOld.GetLabels(), e.ObjectNew.GetLabels()) ||
		!equality.Semantic.DeepEqual(e.ObjectOld.GetAnnotations(), e.ObjectNew.GetAnnotations())
}
