package cli

import (
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
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
	caFile        string
	gracePeriod   time.Duration
	heartbeat     time.Duration
	verify        time.Duration
	maxSize       string
	maxModuleSize string
	kubeconfig    string
	prepareOwner  string
	log           logFlags
}

func newCacheCmd(s streams) *cobra.Command {
	o := cacheOptions{}
	cmd := &cobra.Command{
		Use:   "cache",
		Short: "Run the node cache daemon (the wasme-cache DaemonSet)",
		Long: `Run the node cache: it watches the ModuleSet the operator writes, fetches each module it lists
from the operator over TLS (authenticated with this pod's projected ServiceAccount token of
audience wasme-cache), verifies its sha256,
stores it as <directory>/<sha256 hex> for the node's Envoy sidecars, serves it on
/sha256/<hex> and /<hex>, and reports in the NodeCache named after the node.`,
		Example: `  # in the cluster (deploy/wasme.yaml sets NODE_NAME from spec.nodeName)
  wasme cache --directory /var/local/lib/wasme-cache --port 9979

  # a simulated node on a workstation
  wasme cache --kubeconfig ~/.kube/config --node-name node-a --directory ./cache-a --port 9981 \
    --operator-url https://127.0.0.1:9980 --token-file ./token --ca-file ./module-ca.crt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.prepareOwner != "" {
				return prepareDirectory(o.directory, o.prepareOwner, s.out)
			}
			log, err := o.log.logger(s.errOut)
			if err != nil {
				return err
			}
			opts, err := o.daemonOptions()
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
	f.StringVar(&o.operatorURL, "operator-url", cacheprotocol.DefaultURL, "base URL of the operator's module server (https)")
	f.StringVar(&o.tokenFile, "token-file", cacheprotocol.DefaultTokenFile, "projected ServiceAccount token of audience "+cacheprotocol.Audience+" presented to the operator, re-read on every fetch")
	f.StringVar(&o.caFile, "ca-file", cacheprotocol.DefaultCAFile, "PEM CA the module server's certificate must chain to (ConfigMap "+cacheprotocol.DefaultCAConfigMap+"), re-read when it changes")
	f.DurationVar(&o.gracePeriod, "grace-period", nodecache.DefaultGracePeriod, "how long a module no FilterDeployment names stays on disk")
	f.DurationVar(&o.heartbeat, "heartbeat-interval", nodecache.DefaultHeartbeatInterval, "how often the NodeCache's status.heartbeatTime is renewed; keep it well under the operator's --cache-heartbeat-grace")
	f.DurationVar(&o.verify, "verify-interval", nodecache.DefaultVerifyInterval, "how often every module file is hashed again (files that no longer match their name are removed)")
	f.StringVar(&o.maxSize, "max-size", "0", `cap on the directory's size, such as 2Gi; unused modules are evicted first, modules in use never; "0" means no cap`)
	f.StringVar(&o.maxModuleSize, "max-module-size", "256Mi", "largest module accepted")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file; default: in-cluster config, then $KUBECONFIG, then ~/.kube/config")
	f.StringVar(&o.prepareOwner, "prepare-directory", "", "UID:GID: create --directory if needed, hand it to UID:GID with mode 0755 and exit "+
		"(the DaemonSet's init step, the only one run as root and with CAP_CHOWN alone, so the daemon itself runs as UID)")
	o.log.bind(f)
	return cmd
}

// prepareDirectory gives the cache directory (a hostPath kubelet creates root-owned) to the
// non-root user the daemon runs as. Mode 0755: the sidecars, another user, read the modules.
// It runs as root with CAP_CHOWN only, so the mode is set while root still owns the directory.
func prepareDirectory(dir, owner string, out io.Writer) error {
	us, gs, ok := strings.Cut(owner, ":")
	uid, uerr := strconv.Atoi(us)
	gid, gerr := strconv.Atoi(gs)
	if !ok || uerr != nil || gerr != nil || uid < 0 || gid < 0 {
		return fmt.Errorf("--prepare-directory %q: want UID:GID, such as 65532:65532", owner)
	}
	if dir == "" {
		return fmt.Errorf("--directory must not be empty")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	sys, _ := st.Sys().(*syscall.Stat_t)
	if sys != nil && int(sys.Uid) == uid && int(sys.Gid) == gid && st.Mode().Perm() == 0o755 {
		fmt.Fprintf(out, "%s is owned by %d:%d already\n", dir, uid, gid)
		return nil
	}
	if st.Mode().Perm() != 0o755 {
		if err := os.Chmod(dir, 0o755); err != nil {
			return fmt.Errorf("chmod 0755 %s: %w", dir, err)
		}
	}
	if err := os.Lchown(dir, uid, gid); err != nil {
		return fmt.Errorf("chown %d:%d %s (the init step needs CAP_CHOWN): %w", uid, gid, dir, err)
	}
	fmt.Fprintf(out, "%s is now owned by %d:%d\n", dir, uid, gid)
	return nil
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
	if o.heartbeat <= 0 || o.verify <= 0 {
		return nodecache.Options{}, fmt.Errorf("--heartbeat-interval and --verify-interval must be more than 0")
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
	src, err := cacheprotocol.NewClient(cacheprotocol.ClientOptions{URL: o.operatorURL, TokenFile: o.tokenFile, CAFile: o.caFile, NodeName: o.nodeName})
	if err != nil {
		return nodecache.Options{}, fmt.Errorf("the module server (--operator-url, --token-file, --ca-file): %w", err)
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
		HeartbeatInterval: o.heartbeat, VerifyInterval: o.verify,
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
