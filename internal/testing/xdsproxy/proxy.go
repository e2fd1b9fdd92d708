// Package xdsproxy is a test stand-in for an Istio sidecar's Envoy: an xDS (ADS) client that
// identifies itself to istiod as one workload's sidecar, receives its listeners, finds the
// inbound HTTP filter chain of one port, and runs every envoy.filters.http.wasm filter of that
// chain, in order, on wasme's proxy-wasm host (internal/wasmhost), in front of an upstream
// handler. Modules are read from a node cache directory, where code.local.filename points.
//
// Envoy cannot be installed where wasme's tests run; this proxy lets the end-to-end test see
// what istiod really delivers (filter order, root id, configuration, module path) run the real
// filter bytes. Like Envoy it refuses (NACKs) a listener update with a Wasm filter it cannot
// run as configured, and keeps serving the previous chain; it never silently skips a filter.
package xdsproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"wasme.io/wasme/internal/wasmhost"
)

// ListenerType is the LDS type URL, the only resource type the proxy subscribes to.
const ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"

// Identity is who the proxy says it is: the fields Istio's pilot-agent puts in an Envoy node.
type Identity struct {
	// PodName and Namespace of the workload pod whose sidecar this is.
	PodName, Namespace string
	// PodIP is the pod's status.podIP; istiod finds the pod and its services by it.
	PodIP string
	// Labels are the pod's labels (istiod prefers the Pod object's own when it finds it).
	Labels map[string]string
	// WorkloadName is the owning Deployment's name.
	WorkloadName string
	// ServiceAccount is the pod's service account name.
	ServiceAccount string
	// ClusterID is istiod's cluster id; the default "Kubernetes" when empty.
	ClusterID string
	// IstioVersion is the proxy version the proxy claims, e.g. "1.31.0".
	IstioVersion string
	// DNSDomain is the cluster domain; "cluster.local" when empty.
	DNSDomain string
}

// NodeID is the Envoy node id Istio uses for a sidecar: sidecar~IP~pod.ns~ns.svc.domain.
func (id Identity) NodeID() string {
	return fmt.Sprintf("sidecar~%s~%s.%s~%s.svc.%s", id.PodIP, id.PodName, id.Namespace, id.Namespace, id.domain())
}

func (id Identity) domain() string {
	if id.DNSDomain == "" {
		return "cluster.local"
	}
	return id.DNSDomain
}

// node is the Envoy node pilot-agent would send for this identity. PROXY_CONFIG is the proxy's
// ProxyConfig as pilot-agent resolved it (here the harness mesh's defaultConfig, which names
// only istiod's address): istiod lists a connection among the proxies of its sync state
// (istio.io/debug/syncz, what `istioctl proxy-status` and wasme's Programmed read) only when
// its node carries one.
func (id Identity) node(xdsAddr string) (*corev3.Node, error) {
	cluster := id.ClusterID
	if cluster == "" {
		cluster = "Kubernetes"
	}
	labels := map[string]any{}
	for k, v := range id.Labels {
		labels[k] = v
	}
	md, err := structpb.NewStruct(map[string]any{
		"ISTIO_VERSION":     id.IstioVersion,
		"CLUSTER_ID":        cluster,
		"NAMESPACE":         id.Namespace,
		"NAME":              id.PodName,
		"POD_NAME":          id.PodName,
		"LABELS":            labels,
		"INSTANCE_IPS":      id.PodIP,
		"WORKLOAD_NAME":     id.WorkloadName,
		"SERVICE_ACCOUNT":   id.ServiceAccount,
		"INTERCEPTION_MODE": "REDIRECT",
		"OWNER":             fmt.Sprintf("kubernetes://apis/apps/v1/namespaces/%s/deployments/%s", id.Namespace, id.WorkloadName),
		"PROXY_CONFIG":      map[string]any{"discoveryAddress": xdsAddr},
	})
	if err != nil {
		return nil, err
	}
	// The Envoy cluster name Istio expects: <workload>.<namespace>.
	return &corev3.Node{Id: id.NodeID(), Cluster: id.WorkloadName + "." + id.Namespace, Metadata: md}, nil
}

// Options configure a Proxy.
type Options struct {
	// XDSAddr is istiod's plaintext gRPC address (its --grpcAddr), host:port.
	XDSAddr string
	// Identity is the sidecar the proxy claims to be.
	Identity Identity
	// Port is the inbound service port whose HTTP filter chain the proxy runs.
	Port uint32
	// Resolve maps code.local.filename to a file here (see PrefixResolver).
	Resolve ModuleResolver
	// Upstream is the application behind the sidecar.
	Upstream http.Handler
	// Listen is where the proxy serves HTTP; "127.0.0.1:0" when empty.
	Listen string
	// Log receives the proxy's and the filters' log lines; nil discards them.
	Log *slog.Logger
	// Cache holds compiled modules; several proxies may share one (tests start a proxy per
	// test and need not compile the same module each time). Nil means a cache of its own,
	// closed with the proxy.
	Cache *wasmhost.Cache
}

// Update is one listener response the proxy handled.
type Update struct {
	// Version is the response's version_info.
	Version string
	// Chain is what the proxy now runs (nil when Err is set).
	Chain *Chain
	// Err is why the update was refused (NACKed); the previous chain keeps serving.
	Err error
	// Received is when the response arrived; Applied when its chain started serving (the
	// difference is mostly compiling the modules). Applied is zero for a refused update.
	Received, Applied time.Time
}

// Proxy is a running test sidecar.
type Proxy struct {
	opts Options
	log  *slog.Logger
	ln   net.Listener
	srv  *http.Server
	wc   *wasmhost.Cache
	// ownCache: wc was made by Start and is closed by Close.
	ownCache bool

	mu      sync.RWMutex // guards the fields below; serve holds RLock while running a chain
	handler http.Handler
	plugins []*wasmhost.Plugin
	current *Chain
	version string
	updates []Update
	changed chan struct{} // closed and replaced on every update

	cancel context.CancelFunc
	done   chan struct{}
}

// Start connects to istiod and starts serving HTTP. The proxy serves the upstream without
// filters until the first listener update arrives (WaitChain tells when).
func Start(ctx context.Context, opts Options) (*Proxy, error) {
	if opts.XDSAddr == "" || opts.Resolve == nil || opts.Upstream == nil || opts.Port == 0 {
		return nil, errors.New("xdsproxy: XDSAddr, Port, Resolve and Upstream are required")
	}
	if opts.Listen == "" {
		opts.Listen = "127.0.0.1:0"
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	node, err := opts.Identity.node(opts.XDSAddr)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return nil, err
	}
	wc, ownCache := opts.Cache, opts.Cache == nil
	if ownCache {
		wc = wasmhost.NewCache()
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p := &Proxy{
		opts: opts, log: log, ln: ln, wc: wc, ownCache: ownCache,
		handler: opts.Upstream, changed: make(chan struct{}),
		cancel: cancel, done: make(chan struct{}),
	}
	p.srv = &http.Server{Handler: http.HandlerFunc(p.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(ln) }()
	go func() {
		defer close(p.done)
		p.run(ctx, node)
	}()
	return p, nil
}

// URL is the proxy's base URL, http://ip:port.
func (p *Proxy) URL() string { return "http://" + p.ln.Addr().String() }

// Close stops the xDS stream, the HTTP server and the filters.
func (p *Proxy) Close() error {
	p.cancel()
	<-p.done
	err := p.srv.Close()
	p.mu.Lock()
	old := p.plugins
	p.plugins = nil
	p.mu.Unlock()
	ClosePlugins(old)
	if p.ownCache {
		_ = p.wc.Close(context.Background())
	}
	return err
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	p.mu.RLock()
	h := p.handler
	defer p.mu.RUnlock()
	h.ServeHTTP(w, r)
}

// Current is the chain the proxy runs and the version it was delivered in (nil before the
// first accepted update).
func (p *Proxy) Current() (*Chain, string) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.current, p.version
}

// Updates are every listener response handled so far, oldest first.
func (p *Proxy) Updates() []Update {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return slices.Clone(p.updates)
}

// Changed returns a channel closed at the next handled update (accepted or refused), so
// callers wait for istiod instead of sleeping.
func (p *Proxy) Changed() <-chan struct{} {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.changed
}

// WaitFor waits until cond holds for the current chain (checked now and after every update),
// and returns the last refused update's error with ctx's when it gives up.
func (p *Proxy) WaitFor(ctx context.Context, cond func(c *Chain) bool) (*Chain, error) {
	for {
		ch := p.Changed()
		c, _ := p.Current()
		if c != nil && cond(c) {
			return c, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			var last error
			for _, u := range p.Updates() {
				if u.Err != nil {
					last = u.Err
				}
			}
			if last != nil {
				return c, fmt.Errorf("%w (last refused update: %w)", ctx.Err(), last)
			}
			return c, ctx.Err()
		}
	}
}

// run keeps an ADS stream to istiod, reconnecting with backoff until ctx ends.
func (p *Proxy) run(ctx context.Context, node *corev3.Node) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := p.stream(ctx, node)
		if ctx.Err() != nil {
			return
		}
		p.log.Warn("xDS stream ended; reconnecting", "err", err, "after", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (p *Proxy) stream(ctx context.Context, node *corev3.Node) error {
	conn, err := grpc.NewClient(p.opts.XDSAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		// Listener pushes with several Wasm filters and Istio's own config exceed gRPC's 4 MiB default.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		return err
	}
	defer conn.Close() //nolint:errcheck // ends the stream; nothing is pending on it then
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	// A wildcard LDS subscription: istiod pushes every listener of this sidecar, and again
	// whenever its config (EnvoyFilters included) changes.
	if err := s.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: ListenerType}); err != nil {
		return err
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			return err
		}
		req := &discoveryv3.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}
		if resp.GetTypeUrl() != ListenerType {
			// Nothing else was asked for; ACK so istiod does not wait on it.
			req.VersionInfo = resp.GetVersionInfo()
		} else if err := p.apply(ctx, resp); err != nil {
			// NACK: the previous version stays, as Envoy does.
			p.mu.RLock()
			req.VersionInfo = p.version
			p.mu.RUnlock()
			req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		} else {
			req.VersionInfo = resp.GetVersionInfo()
		}
		if err := s.Send(req); err != nil {
			return err
		}
	}
}

// apply builds the chain from a listener response and swaps it in, or records why not.
func (p *Proxy) apply(ctx context.Context, resp *discoveryv3.DiscoveryResponse) error {
	received := time.Now()
	var listeners []*listenerv3.Listener
	var err error
	for _, r := range resp.GetResources() {
		l := &listenerv3.Listener{}
		if err = r.UnmarshalTo(l); err != nil {
			err = fmt.Errorf("decoding a listener: %w", err)
			break
		}
		listeners = append(listeners, l)
	}
	var chain *Chain
	var plugins []*wasmhost.Plugin
	if err == nil {
		chain, err = buildChain(listeners, p.opts.Port, p.opts.Resolve)
	}
	if err == nil {
		plugins, err = p.startPlugins(ctx, chain)
	}
	u := Update{Version: resp.GetVersionInfo(), Chain: chain, Err: err, Received: received}
	if err != nil {
		u.Chain = nil
		p.log.Error("refusing listener update", "version", u.Version, "err", err)
	} else {
		p.log.Info("listener update applied", "version", u.Version, "listener", chain.Listener,
			"filterChain", chain.FilterChain, "wasmFilters", len(chain.Wasm))
	}
	p.mu.Lock()
	var old []*wasmhost.Plugin
	if err == nil {
		old = p.plugins
		p.plugins, p.current, p.version = plugins, chain, resp.GetVersionInfo()
		p.handler = wasmhost.Chain(plugins...)(p.opts.Upstream)
		u.Applied = time.Now()
	}
	p.updates = append(p.updates, u)
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock() // requests in flight on the old chain held RLock; Lock waited for them
	ClosePlugins(old)
	return err
}

func (p *Proxy) startPlugins(ctx context.Context, c *Chain) ([]*wasmhost.Plugin, error) {
	return StartPlugins(ctx, c.Wasm, p.wc, p.log, p.opts.Identity.NodeID())
}

// StartPlugins starts one wasmhost plugin per filter, in order, sharing cache, with the node
// id as the node.id property; on error the ones started are closed.
func StartPlugins(ctx context.Context, filters []WasmFilter, cache *wasmhost.Cache, log *slog.Logger, nodeID string) ([]*wasmhost.Plugin, error) {
	var out []*wasmhost.Plugin
	for _, w := range filters {
		pl, err := wasmhost.NewPlugin(ctx, wasmhost.PluginConfig{
			Module: w.Module, Name: w.Name, RootID: w.RootID, VMID: w.VMID,
			Configuration: w.Configuration, VMConfiguration: w.VMConfiguration, Env: w.Env,
			FailOpen: w.FailOpen, Cache: cache, Logger: log,
			Properties: map[string][]byte{"node.id": []byte(nodeID)},
		})
		if err != nil {
			ClosePlugins(out)
			return nil, fmt.Errorf("starting Wasm filter %q (root id %q): %w", w.Name, w.RootID, err)
		}
		out = append(out, pl)
	}
	return out, nil
}

// ClosePlugins closes every plugin of ps.
func ClosePlugins(ps []*wasmhost.Plugin) {
	for _, pl := range ps {
		_ = pl.Close(context.Background())
	}
}

// ExtensionConfigType is the ECDS type URL, which Envoy requests by name for an HTTP filter
// with config_discovery.
const ExtensionConfigType = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"

// Discover asks istiod once, on a stream of its own with this proxy's node, for the named
// resources of one type, and returns its answer. The proxy itself runs only what LDS gives it;
// this lets a test see what istiod serves for other types (ECDS) to this sidecar.
func (p *Proxy) Discover(ctx context.Context, typeURL string, names []string) (*discoveryv3.DiscoveryResponse, error) {
	node, err := p.opts.Identity.node(p.opts.XDSAddr)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(p.opts.XDSAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		return nil, err
	}
	defer conn.Close() //nolint:errcheck // ends the stream; nothing is pending on it then
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: typeURL, ResourceNames: names}); err != nil {
		return nil, err
	}
	return s.Recv()
}
