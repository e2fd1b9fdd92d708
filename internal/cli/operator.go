package cli

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap/zapcore"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"wasme.io/wasme/internal/kube"
	"wasme.io/wasme/internal/moduleserver"
	"wasme.io/wasme/internal/operator"
	"wasme.io/wasme/internal/validation"
	"wasme.io/wasme/pkg/wasmimage"
)

type operatorOptions struct {
	kubeconfig              string
	metricsAddr, probeAddr  string
	moduleAddr              string
	leaderElect             bool
	leaderElectionNamespace string
	cacheUsers              []string
	resolveInterval         time.Duration
	cacheReportDelay        time.Duration
	caFile                  string
	maxModuleSize           int64
	moduleStoreSize         int64
	validationTimeout       time.Duration
	validationMemory        int64
	logLevel                string
}

// maxModuleSizeCeiling is the largest --max-module-size: the module store must hold a few.
const maxModuleSizeCeiling = 256 << 20

func newOperatorCmd(s streams) *cobra.Command {
	o := operatorOptions{}
	cmd := &cobra.Command{
		Use:   "operator",
		Short: "Run the FilterDeployment operator (the wasme-operator Deployment)",
		Long: `Run the operator: it reconciles FilterDeployments into workload annotations and Istio
EnvoyFilters, and serves pulled modules to the node caches (the wasme-cache DaemonSet).`,
		Example: `  # in the cluster (deploy/wasme.yaml)
  wasme operator --leader-elect

  # from a workstation, against the current kubeconfig context
  wasme operator --kubeconfig ~/.kube/config --module-bind-address 127.0.0.1:9980`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			level, err := zapcore.ParseLevel(o.logLevel)
			if err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			cfg, err := kube.Config(o.kubeconfig)
			if err != nil {
				return err
			}
			scheme, err := kube.Scheme()
			if err != nil {
				return err
			}
			switch {
			case o.maxModuleSize <= 0 || o.maxModuleSize > maxModuleSizeCeiling:
				return fmt.Errorf("--max-module-size must be between 1 and %d bytes (256 MiB), not %d", maxModuleSizeCeiling, o.maxModuleSize)
			case o.moduleStoreSize < o.maxModuleSize:
				return fmt.Errorf("--module-store-size (%d) must hold at least one module of --max-module-size (%d)", o.moduleStoreSize, o.maxModuleSize)
			case o.validationTimeout <= 0:
				return errors.New("--validation-timeout must be positive")
			case o.validationMemory < 64<<20:
				return errors.New("--validation-memory must be at least 64 MiB")
			}
			imgOpts := []wasmimage.Option{wasmimage.WithMaxModuleSize(o.maxModuleSize)}
			if o.caFile != "" {
				imgOpts = append(imgOpts, wasmimage.WithCAFile(o.caFile))
			}
			ns := o.leaderElectionNamespace
			if ns == "" {
				ns = os.Getenv("POD_NAMESPACE")
			}
			return operator.Run(cmd.Context(), cfg, operator.Options{
				MetricsAddr: o.metricsAddr, ProbeAddr: o.probeAddr, ModuleAddr: o.moduleAddr,
				LeaderElection: o.leaderElect, LeaderElectionNamespace: ns,
				CacheUsers: o.cacheUsers, ResolveInterval: o.resolveInterval, CacheReportDelay: o.cacheReportDelay,
				Images:           operator.RegistryImages{Options: imgOpts},
				MaxModuleBytes:   o.maxModuleSize,
				ModuleStoreBytes: o.moduleStoreSize,
				Validation: validation.Limits{
					Timeout:      o.validationTimeout,
					AddressSpace: uint64(o.validationMemory),
				},
				Scheme: scheme,
				Log:    zap.New(zap.WriteTo(s.errOut), zap.Level(level)),
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file; default: in-cluster config, then $KUBECONFIG, then ~/.kube/config")
	f.StringVar(&o.metricsAddr, "metrics-bind-address", ":8080", `Prometheus metrics address; "0" turns it off`)
	f.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "/healthz and /readyz address")
	f.StringVar(&o.moduleAddr, "module-bind-address", moduleserver.DefaultAddr, "address serving modules to the node caches")
	f.BoolVar(&o.leaderElect, "leader-elect", false, "elect one active replica (all replicas serve modules)")
	f.StringVar(&o.leaderElectionNamespace, "leader-election-namespace", "", "namespace of the leader lease; default $POD_NAMESPACE")
	f.StringSliceVar(&o.cacheUsers, "cache-user", []string{moduleserver.DefaultAllowedUser}, "user names (ServiceAccounts) allowed to fetch modules")
	f.DurationVar(&o.resolveInterval, "resolve-interval", 5*time.Minute, "how often image tags are resolved again, so a re-pushed tag rolls out")
	f.DurationVar(&o.cacheReportDelay, "cache-report-delay", time.Second, "node cache reports within this time cause one pass (and status write) per FilterDeployment; negative: one pass per report")
	f.StringVar(&o.caFile, "registry-ca-file", "", "PEM file of extra CAs trusted for registries")
	f.Int64Var(&o.maxModuleSize, "max-module-size", moduleserver.DefaultMaxModuleBytes, "largest module accepted, in bytes (at most 256 MiB)")
	f.Int64Var(&o.moduleStoreSize, "module-store-size", moduleserver.DefaultMaxStoreBytes, "bytes of modules the operator keeps in memory for validation and the node caches")
	f.DurationVar(&o.validationTimeout, "validation-timeout", validation.DefaultTimeout, "wall-clock budget of one module validation (a child process)")
	f.Int64Var(&o.validationMemory, "validation-memory", validation.DefaultAddressSpace, "address space one validation child may map beyond its start, in bytes")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}
