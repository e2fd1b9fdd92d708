package cli

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/resource"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/cacheprotocol"
	"wasme.io/wasme/internal/kube"
	"wasme.io/wasme/internal/nodecache"
)

type cacheOptions struct {
	directory     string
	port          int
	bindHost      string
	nodeName      string
	operatorURL   string
	tokenFile     string
	gracePeriod   time.Duration
	maxSize       string
	maxModuleSize string
	kubeconfig    string
	log           logFlags
}

func newCacheCmd(s streams) *cobra.Command {
	o := cacheOptions{}
	cmd := &cobra.Command{
		Use:   "cache",
		Short: "Run the node cache daemon (the wasme-cache DaemonSet)",
		Long: `Run the node cache: it watches FilterDeployments, fetches each module their status names
from the operator (authenticated with this pod's ServiceAccount token), verifies its sha256,
stores it as <directory>/<sha256 hex> for the node's Envoy sidecars, serves it on
/sha256/<hex> and /<hex>, and reports in the NodeCache named after the node.`,
		Example: `  # in the cluster (deploy/wasme.yaml sets NODE_NAME from spec.nodeName)
  wasme cache --directory /var/local/lib/wasme-cache --port 9979

  # a simulated node on a workstation
  wasme cache --kubeconfig ~/.kube/config --node-name node-a --directory ./cache-a --port 9981 \
    --operator-url http://127.0.0.1:9980 --token-file ./token`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts, err := o.daemonOptions()
			if err != nil {
				return err
			}
			log, err := o.log.logger(s.errOut)
			if err != nil {
				return err
			}
			cfg, err := kube.Config(o.kubeconfig)
			if err != nil {
				return err
			}
			opts.Config = cfg
			opts.Log = log.WithValues("node", opts.NodeName)
			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			opts.Registry = reg
			d, err := nodecache.New(opts)
			if err != nil {
				return err
			}
			return d.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.directory, "directory", wasmev1.CacheDir, "directory holding the modules (the hostPath mounted into the sidecars)")
	f.IntVar(&o.port, "port", 9979, "port serving modules, /metrics, /healthz and /readyz")
	f.StringVar(&o.bindHost, "bind-host", "", "host or IP to listen on; empty means all interfaces")
	f.StringVar(&o.nodeName, "node-name", "", "this node's name, also the NodeCache's; default $NODE_NAME")
	f.StringVar(&o.operatorURL, "operator-url", "http://wasme-operator.wasme.svc:9980", "base URL of the operator's module server")
	f.StringVar(&o.tokenFile, "token-file", cacheprotocol.DefaultTokenFile, "ServiceAccount token presented to the operator, re-read on every fetch")
	f.DurationVar(&o.gracePeriod, "grace-period", nodecache.DefaultGracePeriod, "how long a module no FilterDeployment names stays on disk")
	f.StringVar(&o.maxSize, "max-size", "0", `cap on the directory's size, such as 2Gi; unused modules are evicted first, modules in use never; "0" means no cap`)
	f.StringVar(&o.maxModuleSize, "max-module-size", "256Mi", "largest module accepted")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file; default: in-cluster config, then $KUBECONFIG, then ~/.kube/config")
	o.log.bind(f)
	return cmd
}

// daemonOptions checks the flags that need no cluster and turns them into daemon options.
func (o *cacheOptions) daemonOptions() (nodecache.Options, error) {
	if o.nodeName == "" {
		// Read here, not as the flag's default, so help and docs/cli.md do not show this host's value.
		o.nodeName = os.Getenv("NODE_NAME")
	}
	if o.nodeName == "" {
		return nodecache.Options{}, fmt.Errorf("--node-name is required (or set NODE_NAME, from spec.nodeName in the DaemonSet)")
	}
	if o.directory == "" {
		return nodecache.Options{}, fmt.Errorf("--directory must not be empty")
	}
	if o.port < 1 || o.port > 65535 {
		return nodecache.Options{}, fmt.Errorf("--port %d: must be between 1 and 65535; the sidecars load modules from this server", o.port)
	}
	if o.gracePeriod < 0 {
		return nodecache.Options{}, fmt.Errorf("--grace-period %s: must not be negative", o.gracePeriod)
	}
	maxSize, err := parseSize("--max-size", o.maxSize)
	if err != nil {
		return nodecache.Options{}, err
	}
	maxModule, err := parseSize("--max-module-size", o.maxModuleSize)
	if err != nil {
		return nodecache.Options{}, err
	}
	if maxModule == 0 {
		return nodecache.Options{}, fmt.Errorf("--max-module-size must be more than 0")
	}
	src, err := cacheprotocol.NewClient(o.operatorURL, o.tokenFile, o.nodeName)
	if err != nil {
		return nodecache.Options{}, fmt.Errorf("--operator-url: %w", err)
	}
	grace := o.gracePeriod
	if grace == 0 {
		// The daemon reads zero as its default; the flag's zero means "at once".
		grace = -1
	}
	return nodecache.Options{
		Dir: o.directory, NodeName: o.nodeName, Source: src,
		Addr:        net.JoinHostPort(o.bindHost, strconv.Itoa(o.port)),
		GracePeriod: grace, MaxBytes: maxSize, MaxModuleBytes: maxModule,
	}, nil
}

func parseSize(flag, v string) (int64, error) {
	q, err := resource.ParseQuantity(v)
	if err != nil {
		return 0, fmt.Errorf("%s %q: want a size such as 512Mi or 2G: %w", flag, v, err)
	}
	if q.Sign() < 0 {
		return 0, fmt.Errorf("%s %q: must not be negative", flag, v)
	}
	return q.Value(), nil
}
