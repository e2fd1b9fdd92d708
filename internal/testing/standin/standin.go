// Package standin is wasme's test proxy in the place of Envoy inside the proxyv2 image: the
// binary /usr/local/bin/envoy that the real pilot-agent starts in every sidecar on the real test
// node. Envoy cannot be built or installed where wasme's tests run; this stands in for the part
// of it that wasme's contract touches, and refuses loudly what it cannot do.
//
// It takes the command line pilot-agent passes (pkg/envoy/proxy.go of the pinned Istio), reads
// the bootstrap pilot-agent writes (node, admin address, static listeners and clusters, the
// xds-grpc cluster's pipe), subscribes over delta ADS through pilot-agent's xDS proxy to CDS,
// LDS and the extension configs (ECDS) its inbound chains name, and ACKs or NACKs (with the
// reason) like Envoy. It serves the admin endpoints pilot-agent uses (/stats for readiness,
// /stats/prometheus, /ready, /server_info, /drain_listeners, /quitquitquit), the bootstrap's
// static listeners (15021 routing /healthz/ready to the agent, 15090 to the admin stats), the
// virtualInbound listener where istio-iptables redirects inbound traffic (the original
// destination port from SO_ORIGINAL_DST picks the filter chain, whose Wasm HTTP filters run on
// wasmhost with modules read from the paths the configuration names, before the route's
// cluster), and virtualOutbound as a TCP passthrough to the original destination.
//
// What it refuses: ads api_type other than DELTA_GRPC, a bootstrap override, listener filters
// and TLS on static listeners, Wasm filters outside the inbound chains, routes it cannot
// match, Wasm configurations it cannot run (see xdsproxy.HTTPFilters): a bootstrap problem
// stops the process with the reason, a dynamic one is NACKed with it.
package standin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"

	"wasme.io/wasme/internal/wasmhost"
)

// Version is what /server_info reports; it names the stand-in, never Envoy.
const Version = "wasme-test-proxy (Envoy stand-in)"

// Flags are the Envoy command-line options pilot-agent passes (and a few more Envoy has that a
// bootstrap override would need); the ones that change nothing here are parsed so that a
// command line this stand-in does not know fails instead of being half understood.
type Flags struct {
	ConfigPath                string
	ConfigYAML                string
	DrainTime                 time.Duration
	DrainStrategy             string
	LocalAddressIPVersion     string
	LogLevel                  string
	ComponentLogLevel         string
	AllowUnknownStaticFields  bool
	RejectUnknownDynamicField bool
	Concurrency               int
}

// ParseFlags reads an Envoy command line (without the program name).
func ParseFlags(args []string) (*Flags, error) {
	fs := pflag.NewFlagSet("envoy", pflag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	f := &Flags{}
	var drainSeconds, parentShutdown, flushMsec, flushKB int
	var ignoredBool bool
	var ignoredStr string
	fs.StringVarP(&f.ConfigPath, "config-path", "c", "", "bootstrap file")
	fs.StringVar(&f.ConfigYAML, "config-yaml", "", "bootstrap override (refused)")
	fs.IntVar(&drainSeconds, "drain-time-s", 600, "drain time in seconds")
	fs.IntVar(&parentShutdown, "parent-shutdown-time-s", 900, "hot restart parent shutdown (no hot restart here)")
	fs.StringVar(&f.DrainStrategy, "drain-strategy", "gradual", "gradual or immediate")
	fs.StringVar(&f.LocalAddressIPVersion, "local-address-ip-version", "v4", "v4 or v6")
	fs.IntVar(&flushMsec, "file-flush-interval-msec", 10000, "access log flush interval (no access logs here)")
	fs.IntVar(&flushKB, "file-flush-min-size-kb", 64, "access log flush size (no access logs here)")
	fs.BoolVar(&ignoredBool, "disable-hot-restart", false, "no hot restart here")
	fs.BoolVar(&f.AllowUnknownStaticFields, "allow-unknown-static-fields", false, "ignore unknown bootstrap fields")
	fs.BoolVar(&f.RejectUnknownDynamicField, "reject-unknown-dynamic-fields", false, "accepted; dynamic resources are decoded with their Go types")
	fs.StringVarP(&f.LogLevel, "log-level", "l", "info", "trace, debug, info, warning/warn, error, critical, off")
	fs.StringVar(&f.ComponentLogLevel, "component-log-level", "", "component:level,... (applied as the overall level's floor)")
	fs.BoolVar(&ignoredBool, "skip-deprecated-logs", false, "no deprecation logs here")
	fs.BoolVar(&ignoredBool, "enable-core-dump", false, "no core dumps here")
	fs.StringVar(&ignoredStr, "log-format", "", "log format (logs are slog text)")
	fs.IntVar(&f.Concurrency, "concurrency", 0, "worker threads (Go schedules goroutines instead)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if f.ConfigPath == "" {
		return nil, errors.New("-c (the bootstrap file) is required")
	}
	if f.ConfigYAML != "" {
		return nil, errors.New("--config-yaml (ISTIO_BOOTSTRAP_OVERRIDE) is not supported by wasme's test proxy")
	}
	switch f.DrainStrategy {
	case "immediate", "gradual":
	default:
		return nil, fmt.Errorf("--drain-strategy %q: immediate or gradual", f.DrainStrategy)
	}
	if f.LocalAddressIPVersion != "v4" {
		return nil, fmt.Errorf("--local-address-ip-version %q: wasme's test proxy runs on IPv4 only", f.LocalAddressIPVersion)
	}
	if drainSeconds < 0 {
		return nil, fmt.Errorf("--drain-time-s %d is negative", drainSeconds)
	}
	f.DrainTime = time.Duration(drainSeconds) * time.Second
	return f, nil
}

func logLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "trace", "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warning", "warn":
		return slog.LevelWarn, nil
	case "error", "critical", "off":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("unknown log level %q", s)
}

// Main runs the stand-in with an Envoy command line until ctx ends, /quitquitquit is posted, or
// it fails; the error says why.
func Main(ctx context.Context, args []string) error {
	f, err := ParseFlags(args)
	if err != nil {
		return err
	}
	lvl, err := logLevel(f.LogLevel)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})).With("proxy", "wasme-test-proxy")
	bs, err := LoadBootstrap(f.ConfigPath, f.AllowUnknownStaticFields)
	if err != nil {
		return err
	}
	s, err := New(bs, f, log)
	if err != nil {
		return err
	}
	return s.Run(ctx)
}

// Server is one running stand-in.
type Server struct {
	bs    *Bootstrap
	flags *Flags
	log   *slog.Logger
	stats *Stats
	wc    *wasmhost.Cache

	mu        sync.RWMutex
	clusters  map[string]*Cluster // bootstrap static clusters and CDS
	snap      *snapshot           // what the dynamic listeners run
	listeners map[string]*dynListener
	draining  bool

	quit     chan struct{}
	quitOnce sync.Once
}

// New prepares a stand-in from its bootstrap.
func New(bs *Bootstrap, f *Flags, log *slog.Logger) (*Server, error) {
	s := &Server{
		bs: bs, flags: f, log: log, stats: NewStats(), wc: wasmhost.NewCache(),
		clusters: map[string]*Cluster{}, listeners: map[string]*dynListener{},
		snap: &snapshot{}, quit: make(chan struct{}),
	}
	for name, c := range bs.Clusters {
		s.clusters[name] = c
	}
	s.stats.Set("server.state", statePreInitializing)
	s.stats.Set("listener_manager.workers_started", 0)
	return s, nil
}

// Envoy's server.state values (envoy.admin.v3.ServerInfo.State).
const (
	stateLive             = 0
	stateDraining         = 1
	statePreInitializing  = 2
	stateInitializing     = 3
	defaultAdminTimeout   = 10 * time.Second
	upstreamDialTimeout   = 5 * time.Second
	maxXDSMessage         = 64 << 20
	readHeaderTimeout     = 10 * time.Second
	initialReconnectDelay = 100 * time.Millisecond
	maxReconnectDelay     = 5 * time.Second
)

// Run serves until ctx ends or /quitquitquit.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer func() { _ = s.wc.Close(context.Background()) }()
	admin, err := s.serveAdmin()
	if err != nil {
		return err
	}
	defer admin.Close() //nolint:errcheck // shutting down
	statics, err := s.serveStatic()
	if err != nil {
		return err
	}
	defer func() {
		for _, c := range statics {
			_ = c.Close()
		}
	}()
	s.log.Info("started", "version", Version, "node", s.bs.Node.GetId(), "admin", s.bs.AdminAddr,
		"xds", s.bs.XDSPipe, "staticListeners", len(statics))
	adsDone := make(chan struct{})
	go func() {
		defer close(adsDone)
		s.runADS(ctx)
	}()
	select {
	case <-ctx.Done():
	case <-s.quit:
		s.log.Info("quitquitquit: exiting")
	}
	cancel()
	<-adsDone
	s.closeDynamic()
	return nil
}

func (s *Server) quitNow() { s.quitOnce.Do(func() { close(s.quit) }) }

// pipePath resolves a pipe path of the bootstrap (pilot-agent writes them relative to its
// working directory, which the stand-in shares).
func pipePath(p string) (string, error) {
	if filepath.IsAbs(p) {
		return p, nil
	}
	return filepath.Abs(p)
}
