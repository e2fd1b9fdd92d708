package standin

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

const hcmType = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"

// connInfo is what a request's handler knows of its downstream connection.
type connInfo struct {
	// origDst is where the client meant to connect (SO_ORIGINAL_DST), or the local address
	// when the connection was not redirected.
	origDst *net.TCPAddr
}

type connInfoKey struct{}

func infoOf(ctx context.Context) *connInfo {
	ci, _ := ctx.Value(connInfoKey{}).(*connInfo)
	return ci
}

// router is an HTTP connection manager's inline route configuration: virtual hosts by domain,
// routes by path prefix or exact path, each to a cluster.
type router struct {
	s          *Server
	name       string
	vhosts     []vhost
	serverName string
}

type vhost struct {
	name    string
	domains []string
	routes  []route
}

type route struct {
	prefix, path, cluster string
}

// hcmOf decodes the HTTP connection manager of a filter chain (nil if it has none).
func hcmOf(fc *listenerv3.FilterChain) (*hcmv3.HttpConnectionManager, error) {
	for _, f := range fc.GetFilters() {
		if f.GetTypedConfig().GetTypeUrl() != hcmType {
			continue
		}
		hcm := &hcmv3.HttpConnectionManager{}
		if err := f.GetTypedConfig().UnmarshalTo(hcm); err != nil {
			return nil, fmt.Errorf("HTTP connection manager: %w", err)
		}
		return hcm, nil
	}
	return nil, nil
}

// newRouter reads an HCM's route configuration; what it cannot match or route is an error.
func (s *Server) newRouter(hcm *hcmv3.HttpConnectionManager) (*router, error) {
	rc := hcm.GetRouteConfig()
	if rc == nil {
		if hcm.GetRds() != nil {
			return nil, fmt.Errorf("HTTP connection manager %s uses RDS (route %q), which wasme's test proxy does not implement", hcm.GetStatPrefix(), hcm.GetRds().GetRouteConfigName())
		}
		return nil, fmt.Errorf("HTTP connection manager %s has no route configuration", hcm.GetStatPrefix())
	}
	rt := &router{s: s, name: rc.GetName(), serverName: hcm.GetServerName()}
	for _, vh := range rc.GetVirtualHosts() {
		v := vhost{name: vh.GetName(), domains: vh.GetDomains()}
		for i, r := range vh.GetRoutes() {
			rr, err := readRoute(r)
			if err != nil {
				return nil, fmt.Errorf("route configuration %q virtual host %q route %d (%s): %w", rc.GetName(), vh.GetName(), i, r.GetName(), err)
			}
			v.routes = append(v.routes, rr)
		}
		rt.vhosts = append(rt.vhosts, v)
	}
	return rt, nil
}

func readRoute(r *routev3.Route) (route, error) {
	m := r.GetMatch()
	if len(m.GetHeaders()) > 0 || len(m.GetQueryParameters()) > 0 || m.GetGrpc() != nil || m.GetRuntimeFraction() != nil || m.GetDynamicMetadata() != nil {
		return route{}, fmt.Errorf("header, query, gRPC, runtime or metadata matches are not implemented by wasme's test proxy")
	}
	var rr route
	switch p := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		rr.prefix = p.Prefix
	case *routev3.RouteMatch_Path:
		rr.path = p.Path
	default:
		return route{}, fmt.Errorf("path match %T is not implemented by wasme's test proxy (prefix and path are)", p)
	}
	a := r.GetRoute()
	if a == nil || a.GetCluster() == "" {
		return route{}, fmt.Errorf("only route actions to a named cluster are implemented by wasme's test proxy")
	}
	rr.cluster = a.GetCluster()
	return rr, nil
}

func domainMatches(d, host string) bool {
	switch {
	case d == "*":
		return true
	case strings.HasPrefix(d, "*"):
		return strings.HasSuffix(host, d[1:])
	case strings.HasSuffix(d, "*"):
		return strings.HasPrefix(host, d[:len(d)-1])
	}
	return strings.EqualFold(d, host)
}

func (rt *router) match(r *http.Request) (route, bool) {
	host := r.Host
	for _, v := range rt.vhosts {
		ok := false
		for _, d := range v.domains {
			if domainMatches(d, host) || domainMatches(d, hostOnly(host)) {
				ok = true
				break
			}
		}
		if !ok {
			continue
		}
		for _, rr := range v.routes {
			if (rr.path != "" && r.URL.Path == rr.path) || (rr.path == "" && strings.HasPrefix(r.URL.Path, rr.prefix)) {
				return rr, true
			}
		}
		return route{}, false
	}
	return route{}, false
}

func hostOnly(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		return host
	}
	return h
}

func (rt *router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if rt.serverName != "" {
		w.Header().Set("Server", rt.serverName)
	}
	rr, ok := rt.match(r)
	if !ok {
		http.NotFound(w, r)
		return
	}
	rt.s.forward(w, r, rr.cluster)
}

// forward sends the request to the cluster's endpoint (or the connection's original
// destination), bound to the cluster's source address.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, clusterName string) {
	s.mu.RLock()
	cl := s.clusters[clusterName]
	s.mu.RUnlock()
	if cl == nil {
		s.log.Warn("no such cluster", "cluster", clusterName)
		http.Error(w, "no healthy upstream (wasme's test proxy has no cluster "+clusterName+")", http.StatusServiceUnavailable)
		return
	}
	if cl.Unsupported != "" {
		s.log.Error("cannot forward", "cluster", clusterName, "reason", cl.Unsupported)
		http.Error(w, "cluster "+clusterName+": "+cl.Unsupported, http.StatusServiceUnavailable)
		return
	}
	network, addr := "tcp", cl.Addr
	switch {
	case cl.Pipe != "":
		p, err := pipePath(cl.Pipe)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		network, addr = "unix", p
	case cl.OriginalDst:
		ci := infoOf(r.Context())
		if ci == nil || ci.origDst == nil {
			http.Error(w, "cluster "+clusterName+" forwards to the original destination, which this connection has none of", http.StatusServiceUnavailable)
			return
		}
		addr = ci.origDst.String()
	}
	tr := s.transport(network, addr, cl.BindIP)
	target := addr
	if network == "unix" {
		target = "localhost"
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = target
			pr.Out.Host = pr.In.Host
		},
		Transport: tr,
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			s.log.Warn("upstream request failed", "cluster", clusterName, "addr", addr, "err", err)
			http.Error(w, "upstream connect error or disconnect/reset before headers: "+err.Error(), http.StatusServiceUnavailable)
		},
	}
	rp.ServeHTTP(w, r)
}

var transports sync.Map // network|addr|bind -> *http.Transport

func (s *Server) transport(network, addr, bind string) *http.Transport {
	key := network + "|" + addr + "|" + bind
	if t, ok := transports.Load(key); ok {
		return t.(*http.Transport)
	}
	d := &net.Dialer{Timeout: upstreamDialTimeout}
	if bind != "" && network == "tcp" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(bind)}
	}
	t := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
		MaxIdleConnsPerHost: 16,
		DisableCompression:  true,
	}
	actual, _ := transports.LoadOrStore(key, t)
	return actual.(*http.Transport)
}

// serveStatic starts the bootstrap's static listeners: one HTTP connection manager each, no
// listener filters, no TLS (Istio's default bootstrap: 15021 readiness, 15090 Prometheus).
func (s *Server) serveStatic() ([]*http.Server, error) {
	var out []*http.Server
	fail := func(err error) ([]*http.Server, error) {
		for _, srv := range out {
			_ = srv.Close()
		}
		return nil, err
	}
	for _, l := range s.bs.Listeners {
		sa := l.GetAddress().GetSocketAddress()
		if sa == nil {
			return fail(fmt.Errorf("static listener %s: only socket addresses are implemented", l.GetName()))
		}
		if len(l.GetListenerFilters()) > 0 {
			return fail(fmt.Errorf("static listener %s: listener filters (%s) are not implemented by wasme's test proxy", l.GetName(), l.GetListenerFilters()[0].GetName()))
		}
		if len(l.GetFilterChains()) != 1 || l.GetFilterChains()[0].GetTransportSocket() != nil {
			return fail(fmt.Errorf("static listener %s: one plaintext filter chain is what wasme's test proxy serves", l.GetName()))
		}
		hcm, err := hcmOf(l.GetFilterChains()[0])
		if err != nil {
			return fail(fmt.Errorf("static listener %s: %w", l.GetName(), err))
		}
		if hcm == nil {
			return fail(fmt.Errorf("static listener %s: no HTTP connection manager", l.GetName()))
		}
		rt, err := s.newRouter(hcm)
		if err != nil {
			return fail(fmt.Errorf("static listener %s: %w", l.GetName(), err))
		}
		addr := net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fail(fmt.Errorf("static listener %s: %w", l.GetName(), err))
		}
		srv := &http.Server{Handler: rt, ReadHeaderTimeout: readHeaderTimeout}
		go func() { _ = srv.Serve(ln) }()
		out = append(out, srv)
	}
	return out, nil
}
