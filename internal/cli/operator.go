package cli

import (
	"cmp"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"strings"
	"time"

	"github.com/spf13/cobra"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/cacheprotocol"
	"wasme.io/wasme/internal/kube"
	"wasme.io/wasme/internal/operator"
	"wasme.io/wasme/internal/proxystatus"
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
	moduleTLSSecret         string
	moduleCAConfigMap       string
	resolveInterval         time.Duration
	cacheReportDelay        time.Duration
	cacheHeartbeatGrace     time.Duration
	caFile                  string
	maxModuleSize           string
	moduleStoreSize         string
	validationTimeout       time.Duration
	validationMemory        string
	allowedRegistries       []string
	clusterCIDRs            []string
	allowInsecure           bool
	cacheDir                string
	cacheURL                string
	istiodAddr              string
	istiodServerName        string
	istiodCAFile            string
	istiodTokenFile         string
	proxyStatusInterval     time.Duration
	log                     logFlags
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
			log, err := o.log.logger(s.errOut)
			if err != nil {
				return err
			}
			maxModule, err := parseSize("--max-module-size", o.maxModuleSize)
			if err != nil {
				return err
			}
			storeSize, err := parseSize("--module-store-size", o.moduleStoreSize)
			if err != nil {
				return err
			}
			validationMemory, err := parseSize("--validation-memory", o.validationMemory)
			if err != nil {
				return err
			}
			switch {
			case maxModule <= 0 || maxModule > maxModuleSizeCeiling:
				return fmt.Errorf("--max-module-size %s: must be more than 0 and at most 256Mi", o.maxModuleSize)
			case storeSize < maxModule:
				return fmt.Errorf("--module-store-size %s must hold at least one module of --max-module-size %s", o.moduleStoreSize, o.maxModuleSize)
			case o.validationTimeout <= 0:
				return errors.New("--validation-timeout must be positive")
			case o.cacheHeartbeatGrace <= 0:
				return errors.New("--cache-heartbeat-grace must be positive")
			case validationMemory < 64<<20:
				return errors.New("--validation-memory must be at least 64Mi")
			}
			if err := checkCacheDir(o.cacheDir); err != nil {
				return err
			}
			if err := checkCacheURL(o.cacheURL); err != nil {
				return err
			}
			proxyStatus, err := o.proxyStatus()
			if err != nil {
				return err
			}
			egress, err := wasmimage.NewEgressPolicy(o.allowedRegistries, o.clusterCIDRs)
			if err != nil {
				return fmt.Errorf("--allowed-registries or --cluster-cidrs: %w", err)
			}
			cfg, err := kube.Config(o.kubeconfig)
			if err != nil {
				return err
			}
			scheme, err := kube.Scheme()
			if err != nil {
				return err
			}
			imgOpts := []wasmimage.Option{wasmimage.WithMaxModuleSize(maxModule)}
			if o.caFile != "" {
				imgOpts = append(imgOpts, wasmimage.WithCAFile(o.caFile))
			}
			ns := o.leaderElectionNamespace
			if ns == "" {
				ns = os.Getenv("POD_NAMESPACE")
			}
			ownNS := cmp.Or(os.Getenv("POD_NAMESPACE"), "wasme")
			return operator.Run(cmd.Context(), cfg, operator.Options{
				MetricsAddr: o.metricsAddr, ProbeAddr: o.probeAddr, ModuleAddr: o.moduleAddr,
				LeaderElection: o.leaderElect, LeaderElectionNamespace: ns,
				CacheUsers: o.cacheUsers, Namespace: ownNS, ModuleTLSSecret: o.moduleTLSSecret, ModuleCAConfigMap: o.moduleCAConfigMap,
				ResolveInterval: o.resolveInterval, CacheReportDelay: o.cacheReportDelay,
				CacheHeartbeatGrace:     o.cacheHeartbeatGrace,
				Images:                  operator.RegistryImages{Options: imgOpts, Egress: egress},
				AllowInsecureRegistries: o.allowInsecure,
				CacheDir:                o.cacheDir,
				ModuleURLBase:           o.cacheURL,
				MaxModuleBytes:          maxModule,
				ModuleStoreBytes:        storeSize,
				Validation: validation.Limits{
					Timeout:      o.validationTimeout,
					AddressSpace: uint64(validationMemory),
				},
				ProxyStatus: proxyStatus,
				Scheme:      scheme,
				Log:         log,
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file; default: in-cluster config, then $KUBECONFIG, then ~/.kube/config")
	f.StringVar(&o.metricsAddr, "metrics-bind-address", ":8080", `Prometheus metrics address; "0" turns it off`)
	f.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "/healthz and /readyz address")
	f.StringVar(&o.moduleAddr, "module-bind-address", cacheprotocol.DefaultAddr, "address serving modules to the node caches")
	f.StringVar(&o.moduleTLSSecret, "module-tls-secret", cacheprotocol.DefaultTLSSecret, "kubernetes.io/tls Secret (with ca.crt) in $POD_NAMESPACE the module server serves with; created with a new CA if missing")
	f.StringVar(&o.moduleCAConfigMap, "module-ca-configmap", cacheprotocol.DefaultCAConfigMap, "ConfigMap in $POD_NAMESPACE where the operator publishes the module server's CA for the node caches")
	f.BoolVar(&o.leaderElect, "leader-elect", false, "elect one active replica (all replicas serve modules)")
	f.StringVar(&o.leaderElectionNamespace, "leader-election-namespace", "", "namespace of the leader lease; default $POD_NAMESPACE")
	f.StringSliceVar(&o.cacheUsers, "cache-user", []string{cacheprotocol.DefaultAllowedUser}, "user names (ServiceAccounts) allowed to fetch modules")
	f.DurationVar(&o.resolveInterval, "resolve-interval", 5*time.Minute, "how often image tags are resolved again, so a re-pushed tag rolls out")
	f.DurationVar(&o.cacheReportDelay, "cache-report-delay", time.Second, "node cache reports within this time cause one pass (and status write) per FilterDeployment; negative: one pass per report")
	f.DurationVar(&o.cacheHeartbeatGrace, "cache-heartbeat-grace", operator.DefaultCacheHeartbeatGrace, "a node cache whose heartbeat is older than this stops counting as ready (keep it above two of the caches' --heartbeat-interval)")
	f.StringVar(&o.caFile, "registry-ca-file", "", "PEM file of extra CAs trusted for registries")
	f.StringVar(&o.maxModuleSize, "max-module-size", quantity(cacheprotocol.DefaultMaxModuleBytes), "largest module accepted, a quantity such as 64Mi (at most 256Mi)")
	f.StringVar(&o.moduleStoreSize, "module-store-size", quantity(cacheprotocol.DefaultMaxStoreBytes), "modules the operator keeps in memory for validation and the node caches, a quantity such as 1Gi")
	f.DurationVar(&o.validationTimeout, "validation-timeout", validation.DefaultTimeout, "wall-clock budget of one module validation (a child process)")
	f.StringVar(&o.validationMemory, "validation-memory", quantity(validation.DefaultAddressSpace), "address space one validation child may map beyond its start, a quantity such as 2Gi")
	f.StringSliceVar(&o.allowedRegistries, "allowed-registries", []string{"*"},
		`hosts the operator may pull from, also for token realms and redirects: host globs with an optional ":port" (exact names and IPs may be internal; "*" and other wildcards reach public addresses only) or CIDRs; see docs/security.md`)
	f.StringSliceVar(&o.clusterCIDRs, "cluster-cidrs", nil, "pod and Service CIDRs of the cluster, refused like private ranges (RFC 1918, CGNAT and ULA already are)")
	f.BoolVar(&o.allowInsecure, "allow-insecure-registries", false,
		"allow imagePullOptions.plainHttp and insecureSkipVerify in every namespace (otherwise only in namespaces labelled "+operator.AllowInsecureRegistriesLabel+"=true)")
	f.StringVar(&o.cacheDir, "cache-directory", wasmev1.CacheDir,
		"the node caches' directory (their --directory, the DaemonSet's hostPath): mounted read-only into the sidecars at the same path and named in the EnvoyFilters")
	f.StringVar(&o.cacheURL, "cache-url", operator.DefaultModuleURLBase,
		"the node-local wasme-cache Service (internalTrafficPolicy Local) that istio-agent fetches modules from in ECDS delivery, as http://host:port")
	f.StringVar(&o.istiodAddr, "istiod-address", DefaultIstiodAddress,
		`where istiod's per-proxy ACK/NACK state is read (the Programmed condition; docs/status.md): its /debug/syncz URL (monitoring port 15014, http or https), or host:port of its TLS xDS port for the xDS debug type; "" turns proxy tracking off`)
	f.StringVar(&o.istiodServerName, "istiod-server-name", "", "name istiod's certificate must carry (https or xDS); default: the host of --istiod-address")
	f.StringVar(&o.istiodCAFile, "istiod-ca-file", DefaultIstiodCAFile, "PEM file of istiod's root CA (the istio-ca-root-cert ConfigMap's root-cert.pem)")
	f.StringVar(&o.istiodTokenFile, "istiod-token-file", DefaultIstiodTokenFile,
		"ServiceAccount token of audience istio-ca presented to istiod (a projected token; re-read for every stream)")
	f.DurationVar(&o.proxyStatusInterval, "proxy-status-interval", proxystatus.DefaultInterval,
		"how often istiod's proxy state is read (one query per interval, whatever the number of FilterDeployments); a proxy that disconnects leaves the counts within it")
	o.log.bind(f)
	return cmd
}

// Where the operator finds istiod and its credentials for it in a cluster (deploy/wasme.yaml
// mounts the CA and the token there).
const (
	DefaultIstiodAddress   = "http://istiod.istio-system.svc:15014/debug/syncz"
	DefaultIstiodCAFile    = "/var/run/secrets/istio/root-cert.pem"
	DefaultIstiodTokenFile = "/var/run/secrets/tokens/istio-token"
)

// minProxyStatusInterval keeps istiod's load bounded: one syncz walks every connection.
const minProxyStatusInterval = time.Second

// proxyStatus turns the --istiod-* flags into the tracker's options; nil when tracking is off.
func (o *operatorOptions) proxyStatus() (*proxystatus.Options, error) {
	if o.istiodAddr == "" {
		return nil, nil
	}
	if o.proxyStatusInterval < minProxyStatusInterval {
		return nil, fmt.Errorf("--proxy-status-interval %s: must be at least %s", o.proxyStatusInterval, minProxyStatusInterval)
	}
	opts := &proxystatus.Options{Token: proxystatus.FileToken(o.istiodTokenFile), Interval: o.proxyStatusInterval}
	var host string
	if u, err := url.Parse(o.istiodAddr); err == nil && (u.Scheme == "http" || u.Scheme == "https") {
		// istiod's HTTP debug endpoint (the default; see proxystatus.Options.SynczURL).
		if u.Host == "" || u.Path != "/debug/syncz" || u.RawQuery != "" {
			return nil, fmt.Errorf("--istiod-address %q: want istiod's syncz URL, such as %s", o.istiodAddr, DefaultIstiodAddress)
		}
		opts.SynczURL, host = o.istiodAddr, u.Hostname()
		if u.Scheme == "http" {
			return opts, nil
		}
	} else {
		// host:port: istiod's xDS debug type on its TLS port.
		h, _, err := net.SplitHostPort(o.istiodAddr)
		if err != nil || h == "" {
			return nil, fmt.Errorf("--istiod-address %q: want istiod's syncz URL (%s) or its TLS xDS host:port (istiod.istio-system.svc:15012)", o.istiodAddr, DefaultIstiodAddress)
		}
		opts.Addr, host = o.istiodAddr, h
	}
	// The CA is read when a connection opens: istiod (which publishes it as ConfigMap
	// istio-ca-root-cert in every namespace) may come after the operator, or rotate it.
	opts.TLS = &tls.Config{ServerName: cmp.Or(o.istiodServerName, host), MinVersion: tls.VersionTLS12}
	opts.CAFile = o.istiodCAFile
	return opts, nil
}

// checkCacheURL refuses a cache URL istio-agent could not fetch "<url>/sha256/<hex>" from.
func checkCacheURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || strings.Trim(u.Path, "/") != "" {
		return fmt.Errorf("--cache-url %q: want http://host:port, such as %s", raw, operator.DefaultModuleURLBase)
	}
	return nil
}

// checkCacheDir refuses a cache directory the sidecars could not mount at the same path.
func checkCacheDir(dir string) error {
	switch {
	case !path.IsAbs(dir):
		return fmt.Errorf("--cache-directory %q: must be an absolute path (the sidecars mount it at the same path)", dir)
	case path.Clean(dir) != dir || dir == "/":
		return fmt.Errorf("--cache-directory %q: must be a clean path below / (such as %s)", dir, wasmev1.CacheDir)
	case strings.ContainsFunc(dir, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return fmt.Errorf("--cache-directory %q: must not contain control characters", dir)
	}
	return nil
}
