package standin

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
)

// Type URLs the stand-in subscribes to.
const (
	ClusterType         = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	ListenerType        = "type.googleapis.com/envoy.config.listener.v3.Listener"
	ExtensionConfigType = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
)

// xdsState is what one ADS stream has accepted.
type xdsState struct {
	clusters     map[string]*clusterv3.Cluster
	listeners    map[string]*listenerv3.Listener
	lVersions    map[string]string
	ecds         map[string]*corev3.TypedExtensionConfig
	ecdsVersions map[string]string
	ecdsSub      []string
	ldsVersion   string
	pendingLDS   bool // listeners accepted but warming on ECDS
	initDone     bool
	cdsOK, ldsOK bool
}

func (s *Server) runADS(ctx context.Context) {
	delay := initialReconnectDelay
	for ctx.Err() == nil {
		err := s.adsStream(ctx)
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("ADS stream ended; reconnecting", "err", err, "after", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, maxReconnectDelay)
	}
}

func (s *Server) adsStream(ctx context.Context) error {
	pipe, err := pipePath(s.bs.XDSPipe)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient("unix://"+pipe, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxXDSMessage)))
	if err != nil {
		return err
	}
	defer conn.Close() //nolint:errcheck // ends the stream
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return err
	}
	// Wildcard subscriptions, as Envoy makes for CDS and LDS with ads; the node only on the
	// first message (set_node_on_first_message_only).
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: s.bs.Node, TypeUrl: ClusterType}); err != nil {
		return err
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: ListenerType}); err != nil {
		return err
	}
	x := &xdsState{
		clusters: map[string]*clusterv3.Cluster{}, listeners: map[string]*listenerv3.Listener{},
		lVersions: map[string]string{}, ecds: map[string]*corev3.TypedExtensionConfig{}, ecdsVersions: map[string]string{},
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			return err
		}
		var nack error
		var follow *discoveryv3.DeltaDiscoveryRequest
		switch resp.GetTypeUrl() {
		case ClusterType:
			nack = s.onClusters(x, resp)
			s.count("cluster_manager.cds", nack)
			if nack == nil {
				x.cdsOK = true
			}
		case ListenerType:
			follow, nack = s.onListeners(ctx, x, resp)
			s.count("listener_manager.lds", nack)
			if nack == nil {
				x.ldsOK = true
			}
		case ExtensionConfigType:
			nack = s.onECDS(ctx, x, resp)
			for _, r := range resp.GetResources() {
				s.count("extension_config_discovery.http_filter."+r.GetName(), nack)
			}
		default:
			nack = fmt.Errorf("type %s was not subscribed to", resp.GetTypeUrl())
		}
		req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}
		if nack != nil {
			s.log.Error("NACK", "type", resp.GetTypeUrl(), "version", resp.GetSystemVersionInfo(), "err", nack)
			req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: nack.Error()}
		} else {
			s.log.Info("ACK", "type", resp.GetTypeUrl(), "version", resp.GetSystemVersionInfo(), "resources", len(resp.GetResources()), "removed", len(resp.GetRemovedResources()))
		}
		if err := st.Send(req); err != nil {
			return err
		}
		if follow != nil {
			if err := st.Send(follow); err != nil {
				return err
			}
		}
		s.maybeLive(x)
	}
}

// count keeps Envoy's update_success / update_rejected stats (config_reload / config_fail for
// extension configs), which pilot-agent's readiness check reads.
func (s *Server) count(prefix string, nack error) {
	ok, fail := ".update_success", ".update_rejected"
	if len(prefix) > 26 && prefix[:26] == "extension_config_discovery" {
		ok, fail = ".config_reload", ".config_fail"
	}
	if nack != nil {
		s.stats.Add(prefix+fail, 1)
		return
	}
	s.stats.Add(prefix+ok, 1)
}

// maybeLive turns the server LIVE (workers started) once clusters and listeners were accepted
// and the listeners are no longer warming, as Envoy's init manager does.
func (s *Server) maybeLive(x *xdsState) {
	if x.initDone || !x.cdsOK || !x.ldsOK || x.pendingLDS {
		return
	}
	x.initDone = true
	if s.stats.Get("server.state") == statePreInitializing {
		s.stats.Set("server.state", stateLive)
		s.stats.Set("listener_manager.workers_started", 1)
		s.log.Info("server LIVE: initial clusters and listeners applied")
	}
}

func (s *Server) onClusters(x *xdsState, resp *discoveryv3.DeltaDiscoveryResponse) error {
	next := maps.Clone(x.clusters)
	for _, name := range resp.GetRemovedResources() {
		delete(next, name)
	}
	for _, r := range resp.GetResources() {
		c := &clusterv3.Cluster{}
		if err := r.GetResource().UnmarshalTo(c); err != nil {
			return fmt.Errorf("cluster %s: %w", r.GetName(), err)
		}
		next[c.GetName()] = c
	}
	all := map[string]*Cluster{}
	for name, c := range s.bs.Clusters {
		all[name] = c
	}
	for name, c := range next {
		cl, err := newCluster(c)
		if err != nil {
			return err
		}
		if c.GetClusterType() != nil {
			cl.Unsupported = "custom cluster type " + c.GetClusterType().GetName() + " is not implemented by wasme's test proxy"
		}
		all[name] = cl
	}
	x.clusters = next
	s.mu.Lock()
	s.clusters = all
	s.mu.Unlock()
	return nil
}

func (s *Server) onListeners(ctx context.Context, x *xdsState, resp *discoveryv3.DeltaDiscoveryResponse) (*discoveryv3.DeltaDiscoveryRequest, error) {
	next, versions := maps.Clone(x.listeners), maps.Clone(x.lVersions)
	for _, name := range resp.GetRemovedResources() {
		delete(next, name)
		delete(versions, name)
	}
	for _, r := range resp.GetResources() {
		l := &listenerv3.Listener{}
		if err := r.GetResource().UnmarshalTo(l); err != nil {
			return nil, fmt.Errorf("listener %s: %w", r.GetName(), err)
		}
		next[l.GetName()] = l
		versions[l.GetName()] = r.GetVersion()
	}
	snap, need, err := s.build(ctx, next, versions, x.ecds, x.ecdsVersions)
	if err != nil && !errors.Is(err, errWarming) {
		return nil, err
	}
	x.listeners, x.lVersions, x.ldsVersion = next, versions, resp.GetSystemVersionInfo()
	follow := s.ecdsSubscription(x, need)
	if errors.Is(err, errWarming) {
		x.pendingLDS = true
		s.log.Info("listeners warming: waiting for extension configs", "names", need)
		return follow, nil
	}
	x.pendingLDS = false
	snap.ldsVersion = x.ldsVersion
	return follow, s.install(snap)
}

// ecdsSubscription returns the request that changes the ECDS subscription to need, or nil.
func (s *Server) ecdsSubscription(x *xdsState, need []string) *discoveryv3.DeltaDiscoveryRequest {
	slices.Sort(need)
	if slices.Equal(need, x.ecdsSub) {
		return nil
	}
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: ExtensionConfigType}
	for _, n := range need {
		if !slices.Contains(x.ecdsSub, n) {
			req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, n)
		}
	}
	for _, n := range x.ecdsSub {
		if !slices.Contains(need, n) {
			req.ResourceNamesUnsubscribe = append(req.ResourceNamesUnsubscribe, n)
			delete(x.ecds, n)
			delete(x.ecdsVersions, n)
		}
	}
	x.ecdsSub = need
	return req
}

func (s *Server) onECDS(ctx context.Context, x *xdsState, resp *discoveryv3.DeltaDiscoveryResponse) error {
	next, versions := maps.Clone(x.ecds), maps.Clone(x.ecdsVersions)
	for _, name := range resp.GetRemovedResources() {
		delete(next, name)
		delete(versions, name)
	}
	for _, r := range resp.GetResources() {
		ec := &corev3.TypedExtensionConfig{}
		if err := r.GetResource().UnmarshalTo(ec); err != nil {
			return fmt.Errorf("extension config %s: %w", r.GetName(), err)
		}
		next[ec.GetName()] = ec
		versions[ec.GetName()] = r.GetVersion()
	}
	snap, _, err := s.build(ctx, x.listeners, x.lVersions, next, versions)
	if errors.Is(err, errWarming) {
		// Still waiting for others; keep what arrived.
		x.ecds, x.ecdsVersions = next, versions
		return nil
	}
	if err != nil {
		return err
	}
	x.ecds, x.ecdsVersions = next, versions
	x.pendingLDS = false
	snap.ldsVersion = x.ldsVersion
	return s.install(snap)
}
