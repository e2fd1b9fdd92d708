package operator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/cacheprotocol"
	"wasme.io/wasme/internal/proxystatus"
	"wasme.io/wasme/internal/validation"
	"wasme.io/wasme/pkg/wasmimage"
)

// Options configure a running operator.
type Options struct {
	// MetricsAddr, ProbeAddr and ModuleAddr are the listen addresses of the metrics endpoint,
	// the health probes and the module server; "0" turns the first two off.
	MetricsAddr, ProbeAddr, ModuleAddr string
	// LeaderElection makes one replica at a time reconcile; every replica serves modules.
	LeaderElection bool
	// LeaderElectionNamespace holds the lease; empty means the in-cluster namespace.
	LeaderElectionNamespace string
	// CacheUsers may fetch modules: the node cache daemons' ServiceAccount user names.
	CacheUsers []string
	// Namespace is the operator's own: it holds the module server's Secret and CA ConfigMap.
	// Empty means "wasme".
	Namespace string
	// ModuleTLSSecret is the module server's certificate Secret in Namespace, created with a
	// new CA when missing. Empty means cacheprotocol.DefaultTLSSecret.
	ModuleTLSSecret string
	// ModuleCAConfigMap is where the Secret's CA is published for the node caches. Empty
	// means cacheprotocol.DefaultCAConfigMap.
	ModuleCAConfigMap string
	// ResolveInterval is how often tags are resolved again.
	ResolveInterval time.Duration
	// CacheReportDelay gathers node cache reports into one pass per FilterDeployment; zero
	// means one second, negative turns it off.
	CacheReportDelay time.Duration
	// CacheHeartbeatGrace is how long a node cache may be silent and still count as ready;
	// zero means DefaultCacheHeartbeatGrace.
	CacheHeartbeatGrace time.Duration
	// AllowInsecureRegistries allows imagePullOptions.plainHttp and insecureSkipVerify in
	// every namespace (otherwise only in namespaces labelled AllowInsecureRegistriesLabel).
	AllowInsecureRegistries bool
	// CacheDir is the node cache's directory, mounted into the sidecars at the same path;
	// empty means wasmev1.CacheDir. It must be the wasme-cache DaemonSet's hostPath.
	CacheDir string
	// ModuleURLBase is the node-local cache Service for ECDS delivery; empty means
	// DefaultModuleURLBase.
	ModuleURLBase string
	// ProxyStatus says how to read istiod's per-proxy state (the Programmed condition); nil
	// turns proxy tracking off.
	ProxyStatus *proxystatus.Options
	// Images defaults to RegistryImages{} (with the default egress policy).
	Images ImageSource
	// Validate defaults to a validation child process per module (internal/validation), run
	// from ValidatorExecutable with the Validation limits. Tests may pass their own.
	Validate Validator
	// ValidatorExecutable is the wasme binary the validation children run. Empty means this
	// process's own executable.
	ValidatorExecutable string
	// Validation bounds each validation: time, address space, guest memory.
	Validation validation.Limits
	// ModuleStoreBytes bounds the module bytes the operator holds (the one store of the
	// reconciler and the module server). Zero means cacheprotocol.DefaultMaxStoreBytes.
	ModuleStoreBytes int64
	// MaxModuleBytes is the largest module the module server accepts. Zero means
	// cacheprotocol.DefaultMaxModuleBytes; the registry pull's own limit is in Images.
	MaxModuleBytes int64
	// SkipNameValidation allows several operators in one process (tests, the local harness).
	SkipNameValidation bool
	// Scheme must hold the wasme, Istio networking and built-in types.
	Scheme *runtime.Scheme
	Log    logr.Logger
}

// Run runs the operator until ctx ends.
func Run(ctx context.Context, cfg *rest.Config, o Options) error {
	if o.Images == nil {
		o.Images = RegistryImages{}
	}
	if ri, ok := o.Images.(RegistryImages); ok && ri.Log.GetSink() == nil {
		ri.Log = o.Log.WithName("registry")
		o.Images = ri
	}
	ctrl.SetLogger(o.Log)
	if o.Validate == nil {
		runner, err := validation.NewRunner(o.ValidatorExecutable, o.Validation, slog.New(logr.ToSlogHandler(o.Log.WithName("validation"))))
		if err != nil {
			return err
		}
		o.Validate = func(ctx context.Context, module []byte, rootID string, config []byte) error {
			err := runner.Validate(ctx, module, rootID, config)
			var le *validation.LimitError
			if err != nil && !errors.As(err, &le) {
				return fmt.Errorf("the filter refused to start: %w", err)
			}
			return err
		}
	}
	if o.ModuleStoreBytes == 0 {
		o.ModuleStoreBytes = cacheprotocol.DefaultMaxStoreBytes
	}
	store := cacheprotocol.NewStore(o.ModuleStoreBytes)
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  o.Scheme,
		Logger:                  o.Log,
		Metrics:                 metricsserver.Options{BindAddress: o.MetricsAddr},
		HealthProbeBindAddress:  o.ProbeAddr,
		LeaderElection:          o.LeaderElection,
		LeaderElectionID:        "wasme-operator.wasme.io",
		LeaderElectionNamespace: o.LeaderElectionNamespace,
		// The operator never reads managed fields, and of workloads (every Deployment of the
		// cluster is cached) only metadata and the pod template's; see slimWorkload.
		Cache: cache.Options{
			DefaultTransform: cache.TransformStripManagedFields(),
			ByObject: map[client.Object]cache.ByObject{
				&appsv1.Deployment{}:  {Transform: slimWorkload},
				&appsv1.DaemonSet{}:   {Transform: slimWorkload},
				&appsv1.StatefulSet{}: {Transform: slimWorkload},
			},
		},
		Controller: config.Controller{SkipNameValidation: &o.SkipNameValidation},
	})
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}
	r := &FilterDeploymentReconciler{
		Client:              mgr.GetClient(),
		APIReader:           mgr.GetAPIReader(),
		Recorder:            mgr.GetEventRecorder(wasmev1.OperatorFieldManager),
		Images:              o.Images,
		Validate:            o.Validate,
		ResolveInterval:     o.ResolveInterval,
		CacheReportDelay:    cmp.Or(o.CacheReportDelay, time.Second),
		CacheHeartbeatGrace: o.CacheHeartbeatGrace,

		AllowInsecureRegistries: o.AllowInsecureRegistries,
		PolicyNamespace:         cmp.Or(o.Namespace, "wasme"),
		CacheDir:                o.CacheDir,
		ModuleURLBase:           o.ModuleURLBase,
	}
	if err := cacheprotocol.IndexFilterDeployments(ctx, mgr.GetFieldIndexer()); err != nil {
		return err
	}
	// Before serving anything: without its certificate the module server cannot start, and
	// the manager's client does not read until the manager starts, so read directly.
	direct, err := client.New(cfg, client.Options{Scheme: o.Scheme})
	if err != nil {
		return fmt.Errorf("creating a client: %w", err)
	}
	tlsCtx, cancel := context.WithTimeout(ctx, time.Minute)
	serving, err := cacheprotocol.EnsureServingTLS(tlsCtx, direct, cmp.Or(o.Namespace, "wasme"),
		cmp.Or(o.ModuleTLSSecret, cacheprotocol.DefaultTLSSecret), cmp.Or(o.ModuleCAConfigMap, cacheprotocol.DefaultCAConfigMap))
	cancel()
	if err != nil {
		return fmt.Errorf("the module server's certificate: %w", err)
	}
	ms, err := cacheprotocol.New(cacheprotocol.Options{
		Client:         mgr.GetClient(),
		Authenticator:  cacheprotocol.NewTokenReviewAuthenticator(mgr.GetClient(), time.Minute, cacheprotocol.Audience),
		AllowedUsers:   o.CacheUsers,
		Addr:           o.ModuleAddr,
		TLSConfig:      serving.TLSConfig(),
		Store:          store,
		MaxModuleBytes: o.MaxModuleBytes,
		Log:            o.Log.WithName("moduleserver"),
		Fetch: func(ctx context.Context, fd *wasmev1.FilterDeployment) ([]byte, error) {
			opts, err := r.pullOptions(ctx, fd)
			if err != nil {
				return nil, err
			}
			ref, err := wasmimage.ParseReference(fd.Spec.Filter.Image)
			if err != nil {
				return nil, err
			}
			img, err := r.fetch(ctx, ref, fd.Status.ImageDigest, opts)
			if err != nil {
				return nil, err
			}
			return img.Module, nil
		},
	})
	if err != nil {
		return fmt.Errorf("creating the module server: %w", err)
	}
	r.Modules = ms
	if err := mgr.Add(ms); err != nil {
		return err
	}
	if o.ProxyStatus != nil {
		po := *o.ProxyStatus
		if po.Log == nil {
			po.Log = slog.New(logr.ToSlogHandler(o.Log.WithName("proxystatus")))
		}
		po.OnChange = r.proxiesChanged
		po.OnPoll = func(err error) {
			mProxyQueries.Inc()
			if err != nil {
				mProxyQueryErrors.Inc()
			}
		}
		tracker, err := proxystatus.NewTracker(po)
		if err != nil {
			return err
		}
		r.Proxies = tracker
		if err := mgr.Add(tracker); err != nil {
			return err
		}
	}
	if err := r.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the FilterDeployment controller: %w", err)
	}
	if err := (&ModuleSetReconciler{Client: mgr.GetClient()}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the ModuleSet controller: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return err
	}
	return mgr.Start(ctx)
}

// slimWorkload keeps of a cached workload what the operator reads: its metadata, its pod
// template's labels and annotations, and its containers' names and images (istiod's version
// is read from its image). make bench measured about 5 KiB of operator memory per unrelated
// Deployment before.
func slimWorkload(obj any) (any, error) {
	slim := func(m *metav1.ObjectMeta, t *corev1.PodTemplateSpec) corev1.PodTemplateSpec {
		m.ManagedFields = nil
		out := corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: t.Labels, Annotations: t.Annotations}}
		for _, c := range t.Spec.Containers {
			out.Spec.Containers = append(out.Spec.Containers, corev1.Container{Name: c.Name, Image: c.Image})
		}
		return out
	}
	switch o := obj.(type) {
	case *appsv1.Deployment:
		o.Spec, o.Status = appsv1.DeploymentSpec{Template: slim(&o.ObjectMeta, &o.Spec.Template)}, appsv1.DeploymentStatus{}
	case *appsv1.DaemonSet:
		o.Spec, o.Status = appsv1.DaemonSetSpec{Template: slim(&o.ObjectMeta, &o.Spec.Template)}, appsv1.DaemonSetStatus{}
	case *appsv1.StatefulSet:
		o.Spec, o.Status = appsv1.StatefulSetSpec{Template: slim(&o.ObjectMeta, &o.Spec.Template)}, appsv1.StatefulSetStatus{}
	}
	return obj, nil
}
