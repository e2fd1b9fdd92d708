package standin

import (
	"fmt"
	"net"
	"os"
	"strconv"

	// The bootstrap's typed configs are decoded with their real types; a type missing here
	// fails the bootstrap with its name instead of being skipped.
	_ "github.com/cncf/xds/go/udpa/type/v1"
	_ "github.com/cncf/xds/go/xds/type/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/compression/brotli/compressor/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/compression/gzip/compressor/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/compression/zstd/compressor/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/compressor/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/proxy_protocol/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/least_request/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

// Bootstrap is what the stand-in takes from the bootstrap pilot-agent writes.
type Bootstrap struct {
	// Raw is the whole decoded bootstrap.
	Raw *bootstrapv3.Bootstrap
	// Node is sent on the first ADS request, as Envoy does with set_node_on_first_message_only.
	Node *corev3.Node
	// AdminAddr is the admin listener, host:port.
	AdminAddr string
	// XDSPipe is the unix socket of the ADS cluster (pilot-agent's xDS proxy).
	XDSPipe string
	// Clusters are the static clusters by name.
	Clusters map[string]*Cluster
	// Listeners are the static listeners.
	Listeners []*listenerv3.Listener
}

// LoadBootstrap reads and checks a bootstrap file (JSON or YAML's JSON subset, as pilot-agent
// writes it).
func LoadBootstrap(path string, allowUnknown bool) (*Bootstrap, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the bootstrap: %w", err)
	}
	raw := &bootstrapv3.Bootstrap{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: allowUnknown}).Unmarshal(data, raw); err != nil {
		return nil, fmt.Errorf("bootstrap %s: %w", path, err)
	}
	return parseBootstrap(raw)
}

func parseBootstrap(raw *bootstrapv3.Bootstrap) (*Bootstrap, error) {
	b := &Bootstrap{Raw: raw, Node: raw.GetNode(), Clusters: map[string]*Cluster{}}
	if b.Node.GetId() == "" {
		return nil, fmt.Errorf("bootstrap: node.id is empty")
	}
	sa := raw.GetAdmin().GetAddress().GetSocketAddress()
	if sa == nil {
		return nil, fmt.Errorf("bootstrap: admin.address is not a socket address")
	}
	b.AdminAddr = net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
	for _, c := range raw.GetStaticResources().GetClusters() {
		cl, err := newCluster(c)
		if err != nil {
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
		b.Clusters[c.GetName()] = cl
	}
	b.Listeners = raw.GetStaticResources().GetListeners()
	dr := raw.GetDynamicResources()
	ads := dr.GetAdsConfig()
	if ads == nil {
		return nil, fmt.Errorf("bootstrap: dynamic_resources.ads_config is missing; wasme's test proxy gets its configuration over ADS only")
	}
	if ads.GetApiType() != corev3.ApiConfigSource_DELTA_GRPC {
		return nil, fmt.Errorf("bootstrap: ads_config api_type %s: wasme's test proxy speaks delta ADS (DELTA_GRPC, pilot-agent's default) only", ads.GetApiType())
	}
	for _, c := range []*corev3.ConfigSource{dr.GetLdsConfig(), dr.GetCdsConfig()} {
		if c.GetAds() == nil {
			return nil, fmt.Errorf("bootstrap: lds_config and cds_config must use ads")
		}
	}
	if len(ads.GetGrpcServices()) != 1 || ads.GetGrpcServices()[0].GetEnvoyGrpc() == nil {
		return nil, fmt.Errorf("bootstrap: ads_config needs exactly one envoy_grpc service")
	}
	xds := b.Clusters[ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName()]
	if xds == nil || xds.Pipe == "" {
		return nil, fmt.Errorf("bootstrap: the ADS cluster %q is not a static cluster on a pipe (pilot-agent's XDS socket)", ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName())
	}
	b.XDSPipe = xds.Pipe
	return b, nil
}

// Cluster is an upstream as the stand-in can reach it.
type Cluster struct {
	Name string
	// Addr (host:port) or Pipe is the single endpoint of a STATIC cluster.
	Addr, Pipe string
	// OriginalDst: the upstream is the downstream connection's original destination.
	OriginalDst bool
	// BindIP is upstream_bind_config's source address (Istio binds inbound forwarding to
	// 127.0.0.6 so that istio-iptables does not redirect it back to the proxy).
	BindIP string
	// Unsupported says why a request to this cluster cannot be forwarded (EDS, DNS ...).
	Unsupported string
}

func newCluster(c *clusterv3.Cluster) (*Cluster, error) {
	cl := &Cluster{Name: c.GetName()}
	if ub := c.GetUpstreamBindConfig().GetSourceAddress(); ub != nil {
		cl.BindIP = ub.GetAddress()
	}
	if c.GetTransportSocket() != nil || c.GetTransportSocketMatches() != nil {
		cl.Unsupported = "TLS to upstreams is not implemented by wasme's test proxy"
		return cl, nil
	}
	switch c.GetType() {
	case clusterv3.Cluster_STATIC:
		eps := c.GetLoadAssignment().GetEndpoints()
		if len(eps) == 0 || len(eps[0].GetLbEndpoints()) == 0 {
			cl.Unsupported = "static cluster without endpoints"
			return cl, nil
		}
		addr := eps[0].GetLbEndpoints()[0].GetEndpoint().GetAddress()
		switch {
		case addr.GetPipe() != nil:
			cl.Pipe = addr.GetPipe().GetPath()
		case addr.GetSocketAddress() != nil:
			s := addr.GetSocketAddress()
			cl.Addr = net.JoinHostPort(s.GetAddress(), strconv.Itoa(int(s.GetPortValue())))
		default:
			return nil, fmt.Errorf("cluster %s: endpoint address of an unknown kind", c.GetName())
		}
	case clusterv3.Cluster_ORIGINAL_DST:
		cl.OriginalDst = true
	default:
		cl.Unsupported = fmt.Sprintf("cluster type %s is not implemented by wasme's test proxy (it forwards to static endpoints and original destinations only)", c.GetType())
	}
	return cl, nil
}
