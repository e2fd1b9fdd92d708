package standin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"wasme.io/wasme/internal/testing/xdsproxy"
	"wasme.io/wasme/internal/wasmhost"
)

const (
	tcpProxyType   = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
	wasmHTTPType   = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
	wasmNetType    = "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm"
	virtualInbound = "virtualInbound"
	virtualOutbnd  = "virtualOutbound"
)

type listenerKind int

const (
	kindInbound listenerKind = iota
	kindOutbound
	kindUnsupported
)

// inChain is the inbound filter chain for one destination port.
type inChain struct {
	name string
	// handler runs the chain's HTTP filters (Wasm on wasmhost) and its router; nil for TCP.
	handler http.Handler
	// tcpCluster is the tcp_proxy's cluster of a TCP chain.
	tcpCluster string
	wasm       []string
}

// snapshot is what one accepted set of listeners and extension configs runs.
type snapshot struct {
	ldsVersion       string
	listenerVersions map[string]string
	ecdsVersions     map[string]string
	built            time.Time
	// inbound chains by destination port; 0 is the chain without a port match.
	inbound map[uint32]*inChain
	bound   map[string]boundSpec
	plugins []*wasmhost.Plugin
	// inflight counts requests on this snapshot; its plugins close when it is replaced and
	// they are done.
	inflight sync.WaitGroup
}

type boundSpec struct {
	addr string
	kind listenerKind
}

// errWarming: the listeners name extension configs that have not arrived; Envoy keeps them
// warming (the previous ones serve), and so does the stand-in.
var errWarming = errors.New("listeners warming")

// build makes a snapshot of listeners and extension configs. It returns the ECDS names the
// inbound chains use (received or not) and errWarming when some have not arrived yet.
func (s *Server) build(ctx context.Context, listeners map[string]*listenerv3.Listener, versions map[string]string, ecds map[string]*corev3.TypedExtensionConfig, ecdsVersions map[string]string) (*snapshot, []string, error) {
	snap := &snapshot{
		listenerVersions: versions, ecdsVersions: ecdsVersions, built: time.Now(),
		inbound: map[uint32]*inChain{}, bound: map[string]boundSpec{},
	}
	var need []string
	warming := false
	lookup := func(name string) (*anypb.Any, bool) {
		if !slices.Contains(need, name) {
			need = append(need, name)
		}
		ec, ok := ecds[name]
		if !ok {
			return nil, false
		}
		return ec.GetTypedConfig(), true
	}
	var steps []xdsproxy.Step
	type pending struct {
		port   uint32
		chain  *inChain
		steps  []xdsproxy.Step
		router *router
	}
	var chains []pending
	for _, name := range sortedKeys(listeners) {
		l := listeners[name]
		kind := kindUnsupported
		switch name {
		case virtualInbound:
			kind = kindInbound
		case virtualOutbnd:
			kind = kindOutbound
		}
		if kind != kindInbound {
			if err := noWasm(l); err != nil {
				return nil, need, err
			}
		}
		if l.GetBindToPort() == nil || l.GetBindToPort().GetValue() {
			sa := l.GetAddress().GetSocketAddress()
			if sa == nil {
				return nil, need, fmt.Errorf("listener %s: only socket addresses are implemented by wasme's test proxy", name)
			}
			snap.bound[name] = boundSpec{addr: net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))), kind: kind}
		}
		if kind != kindInbound {
			continue
		}
		for port, fc := range inboundChains(l) {
			ch := &inChain{name: fc.GetName()}
			hcm, err := hcmOf(fc)
			if err != nil {
				return nil, need, fmt.Errorf("listener %s filter chain %s: %w", name, fc.GetName(), err)
			}
			if hcm == nil {
				cl, err := tcpClusterOf(fc)
				if err != nil {
					return nil, need, fmt.Errorf("listener %s filter chain %s: %w", name, fc.GetName(), err)
				}
				ch.tcpCluster = cl
				snap.inbound[port] = ch
				continue
			}
			st, err := xdsproxy.HTTPFilters(hcm, moduleAt, lookup)
			if errors.Is(err, xdsproxy.ErrNotReceived) {
				warming = true
				continue
			}
			if err != nil {
				return nil, need, fmt.Errorf("listener %s filter chain %s: %w", name, fc.GetName(), err)
			}
			rt, err := s.newRouter(hcm)
			if err != nil {
				return nil, need, fmt.Errorf("listener %s filter chain %s: %w", name, fc.GetName(), err)
			}
			chains = append(chains, pending{port: port, chain: ch, steps: st, router: rt})
			steps = append(steps, st...)
		}
	}
	if warming {
		return nil, need, errWarming
	}
	var filters []xdsproxy.WasmFilter
	for _, st := range steps {
		if st.Wasm != nil {
			filters = append(filters, *st.Wasm)
		}
	}
	plugins, err := xdsproxy.StartPlugins(ctx, filters, s.wc, s.log, s.bs.Node.GetId())
	if err != nil {
		return nil, need, err
	}
	snap.plugins = plugins
	i := 0
	for _, p := range chains {
		var h http.Handler = p.router
		var names []string
		// Wrap from the last filter to the first, so the first filter runs first.
		type layer struct {
			pl   *wasmhost.Plugin
			deny bool
			name string
		}
		var layers []layer
		for _, st := range p.steps {
			switch {
			case st.Wasm != nil:
				layers = append(layers, layer{pl: plugins[i], name: st.Name})
				i++
			case st.Deny:
				layers = append(layers, layer{deny: true, name: st.Name})
			}
		}
		for j := len(layers) - 1; j >= 0; j-- {
			if layers[j].deny {
				h = denyAll(layers[j].name)
			} else {
				h = layers[j].pl.Wrap(h)
			}
		}
		for _, ly := range layers {
			names = append(names, ly.name)
		}
		p.chain.handler, p.chain.wasm = h, names
		snap.inbound[p.port] = p.chain
	}
	return snap, need, nil
}

// moduleAt reads a module where the configuration says: inside the container, the path is the
// path (the hostPath mount of the seed's delivery, or the file istio-agent wrote for ECDS).
func moduleAt(filename string) (string, error) {
	if filename == "" || filename[0] != '/' {
		return "", fmt.Errorf("module file %q is not an absolute path", filename)
	}
	return filename, nil
}

func denyAll(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusForbidden)
		_, _ = io.WriteString(w, "RBAC: access denied")
		_ = name
	})
}

// inboundChains picks, per destination port (0: no port match), the chain plain traffic takes:
// an HTTP connection manager chain when the port has one (wasme's tests send HTTP/1.1 on HTTP
// ports; Envoy's http_inspector would pick it too), plaintext over TLS.
func inboundChains(l *listenerv3.Listener) map[uint32]*listenerv3.FilterChain {
	best := map[uint32]*listenerv3.FilterChain{}
	score := map[uint32]int{}
	for _, fc := range l.GetFilterChains() {
		m := fc.GetFilterChainMatch()
		if fc.GetTransportSocket() != nil || (m.GetTransportProtocol() != "" && m.GetTransportProtocol() != "raw_buffer") {
			continue
		}
		if len(m.GetPrefixRanges()) > 0 || len(m.GetServerNames()) > 0 || len(m.GetSourcePrefixRanges()) > 0 {
			continue
		}
		port := m.GetDestinationPort().GetValue()
		sc := 1
		if h, _ := hcmOf(fc); h != nil {
			sc += 2
		}
		if ap := m.GetApplicationProtocols(); len(ap) == 0 || slices.Contains(ap, "http/1.1") {
			sc++
		}
		if sc > score[port] {
			best[port], score[port] = fc, sc
		}
	}
	return best
}

func tcpClusterOf(fc *listenerv3.FilterChain) (string, error) {
	for _, f := range fc.GetFilters() {
		if f.GetTypedConfig().GetTypeUrl() != tcpProxyType {
			continue
		}
		tp := &tcpproxyv3.TcpProxy{}
		if err := f.GetTypedConfig().UnmarshalTo(tp); err != nil {
			return "", err
		}
		if tp.GetCluster() == "" {
			return "", fmt.Errorf("tcp_proxy without a single cluster is not implemented by wasme's test proxy")
		}
		return tp.GetCluster(), nil
	}
	return "", fmt.Errorf("neither an HTTP connection manager nor a tcp_proxy")
}

// noWasm refuses a Wasm filter where the stand-in does not run filters (outbound, gateways):
// Envoy would run it, so accepting the listener would silently skip it.
func noWasm(l *listenerv3.Listener) error {
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			if f.GetTypedConfig().GetTypeUrl() == wasmNetType || slices.Contains(f.GetConfigDiscovery().GetTypeUrls(), wasmNetType) {
				return fmt.Errorf("listener %s filter chain %s: a Wasm network filter; wasme's test proxy runs Wasm HTTP filters of the inbound chains only", l.GetName(), fc.GetName())
			}
		}
		hcm, err := hcmOf(fc)
		if err != nil || hcm == nil {
			continue
		}
		for _, hf := range hcm.GetHttpFilters() {
			if hf.GetName() == xdsproxy.WasmFilterName || hf.GetTypedConfig().GetTypeUrl() == wasmHTTPType || slices.Contains(hf.GetConfigDiscovery().GetTypeUrls(), wasmHTTPType) {
				return fmt.Errorf("listener %s filter chain %s: Wasm HTTP filter %s; wasme's test proxy runs Wasm filters of the inbound sidecar chains (virtualInbound) only, not outbound or gateway ones", l.GetName(), fc.GetName(), hf.GetName())
			}
		}
	}
	return nil
}

// install makes snap the running snapshot: listeners are started and stopped to match, and
// the previous snapshot's plugins close once its requests are done.
func (s *Server) install(snap *snapshot) error {
	s.mu.Lock()
	var errs []error
	for name, l := range s.listeners {
		if spec, ok := snap.bound[name]; !ok || spec != l.spec {
			l.close()
			delete(s.listeners, name)
		}
	}
	for name, spec := range snap.bound {
		if _, ok := s.listeners[name]; ok {
			continue
		}
		l, err := s.listen(name, spec)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.listeners[name] = l
	}
	old := s.snap
	s.snap = snap
	s.mu.Unlock()
	var chains []string
	for _, port := range sortedPorts(snap.inbound) {
		ch := snap.inbound[port]
		kind := "tcp"
		if ch.handler != nil {
			kind = fmt.Sprintf("http wasm=%v", ch.wasm)
		}
		chains = append(chains, fmt.Sprintf("%d:%s(%s)", port, ch.name, kind))
	}
	s.log.Info("inbound chains", "chains", chains)
	go func() {
		old.inflight.Wait()
		xdsproxy.ClosePlugins(old.plugins)
	}()
	return errors.Join(errs...)
}

func (s *Server) acquire() *snapshot {
	s.mu.RLock()
	defer s.mu.RUnlock()
	s.snap.inflight.Add(1)
	return s.snap
}

func (s *Server) closeDynamic() {
	s.mu.Lock()
	for name, l := range s.listeners {
		l.close()
		delete(s.listeners, name)
	}
	old := s.snap
	s.snap = &snapshot{}
	s.mu.Unlock()
	old.inflight.Wait()
	xdsproxy.ClosePlugins(old.plugins)
}

// dynListener is a bound LDS listener.
type dynListener struct {
	s       *Server
	name    string
	spec    boundSpec
	inbound bool
	ln      net.Listener
	http    *http.Server
	conns   *chanListener
	stopped atomic.Bool
}

func (s *Server) listen(name string, spec boundSpec) (*dynListener, error) {
	ln, err := net.Listen("tcp", spec.addr)
	if err != nil {
		return nil, fmt.Errorf("listener %s: %w", name, err)
	}
	l := &dynListener{s: s, name: name, spec: spec, inbound: spec.kind == kindInbound, ln: ln, conns: newChanListener(ln.Addr())}
	var h http.Handler
	switch spec.kind {
	case kindInbound:
		h = http.HandlerFunc(l.serveInbound)
	default:
		h = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "listener "+name+" is not served by wasme's test proxy (it serves the sidecar's virtualInbound and virtualOutbound)", http.StatusNotImplemented)
		})
	}
	l.http = &http.Server{
		Handler: h, ReadHeaderTimeout: readHeaderTimeout,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if tc, ok := c.(*trackedConn); ok {
				return context.WithValue(ctx, connInfoKey{}, tc.info)
			}
			return ctx
		},
	}
	go func() { _ = l.http.Serve(l.conns) }()
	go l.accept()
	s.log.Info("listening", "listener", name, "addr", spec.addr)
	return l, nil
}

func (l *dynListener) statPrefix() string { return "listener." + l.spec.addr + "." }

func (l *dynListener) accept() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		go l.handle(c.(*net.TCPConn))
	}
}

func (l *dynListener) handle(c *net.TCPConn) {
	dst, err := originalDst(c)
	if err != nil {
		l.s.log.Warn("original destination", "listener", l.name, "err", err)
		_ = c.Close()
		return
	}
	st := l.s.stats
	st.Add(l.statPrefix()+"downstream_cx_total", 1)
	st.Add(l.statPrefix()+"downstream_cx_active", 1)
	tc := &trackedConn{TCPConn: c, info: &connInfo{origDst: dst}, done: func() { st.Add(l.statPrefix()+"downstream_cx_active", -1) }}
	switch l.spec.kind {
	case kindOutbound:
		// Outbound routing (RDS, EDS) is not implemented: the connection goes where it was
		// headed, as Envoy's PassthroughCluster sends it (the proxy's uid 1337 is not
		// redirected again). Wasm filters on outbound listeners are refused at LDS.
		if dst.Port == l.ln.Addr().(*net.TCPAddr).Port {
			_ = tc.Close()
			return
		}
		l.s.pipeTCP(tc, dst.String(), "")
		return
	case kindInbound:
		snap := l.s.acquire()
		ch := snap.inbound[uint32(dst.Port)]
		if ch == nil {
			ch = snap.inbound[0]
		}
		snap.inflight.Done()
		if ch == nil {
			l.s.log.Warn("no inbound filter chain", "port", dst.Port)
			_ = tc.Close()
			return
		}
		if ch.handler == nil {
			l.s.mu.RLock()
			cl := l.s.clusters[ch.tcpCluster]
			l.s.mu.RUnlock()
			if cl == nil || cl.Unsupported != "" || !(cl.OriginalDst || cl.Addr != "") {
				l.s.log.Warn("inbound TCP chain without a usable cluster", "chain", ch.name, "cluster", ch.tcpCluster)
				_ = tc.Close()
				return
			}
			addr := cl.Addr
			if cl.OriginalDst {
				addr = dst.String()
			}
			l.s.pipeTCP(tc, addr, cl.BindIP)
			return
		}
	}
	if !l.conns.push(tc) {
		_ = tc.Close()
	}
}

// serveInbound runs the HTTP chain of the connection's original destination port.
func (l *dynListener) serveInbound(w http.ResponseWriter, r *http.Request) {
	ci := infoOf(r.Context())
	snap := l.s.acquire()
	defer snap.inflight.Done()
	ch := snap.inbound[uint32(ci.origDst.Port)]
	if ch == nil || ch.handler == nil {
		ch = snap.inbound[0]
	}
	if ch == nil || ch.handler == nil {
		http.Error(w, fmt.Sprintf("no inbound HTTP filter chain for port %d", ci.origDst.Port), http.StatusNotFound)
		return
	}
	l.s.stats.Add("http.inbound.downstream_rq_total", 1)
	ch.handler.ServeHTTP(w, r)
}

func (l *dynListener) startDrain() { l.http.SetKeepAlivesEnabled(false) }

func (l *dynListener) stopAccepting() {
	if l.stopped.CompareAndSwap(false, true) {
		_ = l.ln.Close()
		l.s.log.Info("listener drained: no longer accepting", "listener", l.name)
	}
}

func (l *dynListener) close() {
	l.stopAccepting()
	_ = l.http.Close()
}

// pipeTCP copies both ways between c and addr (bound to bind when set).
func (s *Server) pipeTCP(c net.Conn, addr, bind string) {
	defer c.Close() //nolint:errcheck // done with it
	d := &net.Dialer{Timeout: upstreamDialTimeout}
	if bind != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(bind)}
	}
	up, err := d.Dial("tcp", addr)
	if err != nil {
		s.log.Warn("TCP upstream", "addr", addr, "err", err)
		return
	}
	defer up.Close() //nolint:errcheck // done with it
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); closeWrite(up); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); closeWrite(c); done <- struct{}{} }()
	<-done
	<-done
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite()
	}
}

// trackedConn carries a connection's original destination and counts it active until closed.
type trackedConn struct {
	*net.TCPConn
	info *connInfo
	once sync.Once
	done func()
}

func (c *trackedConn) Close() error {
	c.once.Do(c.done)
	return c.TCPConn.Close()
}

func (c *trackedConn) CloseWrite() error { return c.TCPConn.CloseWrite() }

// chanListener hands accepted connections to an http.Server.
type chanListener struct {
	addr   net.Addr
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, ch: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *chanListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.closed:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

func sortedPorts(m map[uint32]*inChain) []uint32 {
	out := make([]uint32, 0, len(m))
	for p := range m {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}
