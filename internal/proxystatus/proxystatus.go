// Package proxystatus reads istiod's own per-proxy state: which proxies are connected to it and,
// for each xDS type, whether the proxy ACKed the last response istiod sent, when that was
// sent, and the error of its last NACK, as `istioctl proxy-status` shows it. Two transports:
// istiod's HTTP debug endpoint /debug/syncz (SynczURL, the default in the operator), and the
// xDS debug type istio.io/debug/syncz on istiod's ADS port (Addr), which has an istiod
// deadlock against it (see Options.SynczURL). Either way istiod requires a Kubernetes token of
// audience istio-ca (its KubeJWTAuthenticator does a TokenReview; over ADS only on TLS) from a
// namespace it admits to its debug endpoints (its root namespace, or one named in istiod's
// DEBUG_ENDPOINT_AUTH_ALLOWED_NAMESPACES).
//
// A Tracker polls at a fixed interval, so the cost is one syncz per interval per istiod
// replica, whatever the number of FilterDeployments.
package proxystatus

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// Audience is the audience istiod accepts tokens for (its TOKEN_AUDIENCES default).
const Audience = "istio-ca"

// Type URLs.
const (
	// SynczType is istiod's xDS debug type for the sync state of its connected proxies.
	SynczType = "istio.io/debug/syncz"
	// ListenerType carries the filter in mount delivery (the Wasm filter is in the listener).
	ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	// ExtensionConfigType carries the filter in ECDS delivery.
	ExtensionConfigType = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
)

// Sync is istiod's verdict on one xDS type of one proxy (Envoy CSDS's ConfigStatus).
type Sync string

// Sync states, as istiod computes them (pilot/pkg/xds/statusgen.go).
const (
	// Synced: the proxy ACKed the last response istiod sent.
	Synced Sync = "SYNCED"
	// Stale: istiod sent a response the proxy has not answered yet.
	Stale Sync = "STALE"
	// Error: the proxy's last answer was a NACK (Resource.Error has its message).
	Error Sync = "ERROR"
	// NotSent: istiod never sent this type to the proxy.
	NotSent Sync = "NOT_SENT"
)

// Resource is one xDS type of one proxy.
type Resource struct {
	Sync Sync
	// Sent is when istiod last sent this type to the proxy.
	Sent time.Time
	// Error is the proxy's last NACK message (empty after an ACK).
	Error string
}

// Proxy is one proxy connected to istiod.
type Proxy struct {
	// ID is istiod's proxy id, "<pod>.<namespace>" for a pod's sidecar.
	ID string
	// Pod and Namespace are the pod the node id names.
	Pod, Namespace string
	// Istiod is the istiod instance (its pod name) the proxy is connected to.
	Istiod string
	// Types are the proxy's xDS types by type URL.
	Types map[string]Resource
}

// Snapshot is istiod's proxy state at one poll.
type Snapshot struct {
	// At is when the poll was answered.
	At time.Time
	// Proxies by "namespace/pod". A pod with two connections (a restart) keeps the latest sent.
	Proxies map[string]Proxy
	// Err is why the last poll failed; Proxies are then empty.
	Err error
}

// Proxy returns the proxy of a pod, if istiod knows one.
func (s *Snapshot) Proxy(namespace, pod string) (Proxy, bool) {
	p, ok := s.Proxies[namespace+"/"+pod]
	return p, ok
}

// Identity is who the tracker is to istiod: its ServiceAccount, whose token it presents.
type Identity struct {
	// Namespace and ServiceAccount of the token; istiod checks that they match the node.
	Namespace, ServiceAccount string
	// Name is the node's name (the operator's pod name); any name will do.
	Name string
}

// Options configure a Tracker.
type Options struct {
	// Addr is istiod's ADS address, host:port: the TLS port (15012) in a cluster. Unused when
	// SynczURL is set.
	Addr string
	// SynczURL, when set, is istiod's HTTP debug endpoint /debug/syncz (its monitoring port,
	// 15014, in a cluster), read instead of the xDS debug type: istiod's xDS syncz generator
	// takes a proxy's read lock twice (StatusGen.debugSyncz, then DeepCloneWatchedResources),
	// which deadlocks that proxy when its xDS goroutine wants the write lock in between (Go's
	// RWMutex forbids recursive read locks). The HTTP handler locks once per call.
	SynczURL string
	// TLS is the client TLS configuration (istiod's root CA, server name
	// istiod.<namespace>.svc); nil means plaintext, which istiod accepts for debug types only
	// when it does not authenticate them (ENABLE_DEBUG_ENDPOINT_AUTH=false).
	TLS *tls.Config
	// CAFile, when set, is a PEM file of istiod's root CA, read at every new stream into TLS's
	// RootCAs (TLS must be set).
	CAFile string
	// Token returns the bearer token (audience istio-ca) for a new stream; nil sends none.
	Token func(context.Context) (string, error)
	// Identity is who the tracker claims to be.
	Identity Identity
	// Interval between polls; zero means DefaultInterval.
	Interval time.Duration
	// Timeout bounds one poll; zero means DefaultTimeout.
	Timeout time.Duration
	// OnChange is called after a poll whose result differs from the previous one, with both.
	OnChange func(old, cur *Snapshot)
	// OnPoll is called after every query with its error (nil when it was answered).
	OnPoll func(err error)
	// Log receives connection errors.
	Log *slog.Logger
}

// Defaults.
const (
	// DefaultInterval: 6 syncz queries a minute per istiod.
	DefaultInterval = 10 * time.Second
	// DefaultTimeout bounds one query.
	DefaultTimeout = 10 * time.Second
	// maxMessageBytes bounds one syncz answer (about 1 KiB per proxy).
	maxMessageBytes = 64 << 20
)

// Tracker polls istiod's syncz and keeps the latest snapshot.
type Tracker struct {
	opts Options
	log  *slog.Logger

	mu       sync.RWMutex
	current  *Snapshot
	queries  int64
	failures int
	last     QueryStats
}

// QueryStats describe the last answered query.
type QueryStats struct {
	// Duration from sending the request to decoding the answer.
	Duration time.Duration
	// Bytes of the answer (its protobuf size).
	Bytes int
	// Proxies listed in it.
	Proxies int
}

// LastQuery describes the last answered query.
func (t *Tracker) LastQuery() QueryStats {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.last
}

// maxStale is how many failed queries in a row keep the last answer.
const maxStale = 3

// NewTracker makes a Tracker; Start runs it.
func NewTracker(opts Options) (*Tracker, error) {
	if opts.Addr == "" && opts.SynczURL == "" {
		return nil, errors.New("proxystatus: istiod address is required")
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if (opts.Identity.Namespace == "" || opts.Identity.ServiceAccount == "") && opts.Token == nil {
		return nil, errors.New("proxystatus: the identity's namespace and service account, or a token, are required")
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Tracker{opts: opts, log: log, current: &Snapshot{Err: errors.New("istiod not polled yet")}}, nil
}

// Interval is the poll interval in effect.
func (t *Tracker) Interval() time.Duration { return t.opts.Interval }

// Snapshot is the latest poll's result (never nil).
func (t *Tracker) Snapshot() *Snapshot {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.current
}

// Queries is how many syncz queries were sent so far.
func (t *Tracker) Queries() int64 {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.queries
}

// NeedLeaderElection: only the leader reconciles, so only it needs istiod's state.
func (t *Tracker) NeedLeaderElection() bool { return true }

// Start polls until ctx ends (a controller-runtime Runnable).
func (t *Tracker) Start(ctx context.Context) error {
	var s *stream
	defer func() {
		if s != nil {
			s.close()
		}
	}()
	tick := time.NewTicker(t.opts.Interval)
	defer tick.Stop()
	if t.opts.SynczURL != "" {
		hc, err := t.httpClient()
		if err != nil {
			return err
		}
		for {
			t.record(t.pollHTTP(ctx, hc))
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			}
		}
	}
	for {
		if s == nil || s.opened.Add(maxStreamAge).Before(time.Now()) {
			// A stream lives at most maxStreamAge, so a rotated token is presented again.
			if s != nil {
				s.close()
			}
			var err error
			if s, err = t.open(ctx); err != nil {
				s = nil
				t.record(&Snapshot{At: time.Now(), Err: err})
			}
		}
		if s != nil {
			snap := t.poll(ctx, s)
			if snap.Err != nil {
				s.close()
				s = nil
			}
			t.record(snap)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// maxStreamAge bounds a stream's life (the token is checked when a stream opens).
const maxStreamAge = 10 * time.Minute

type stream struct {
	conn   *grpc.ClientConn
	ads    discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	cancel context.CancelFunc
	opened time.Time
	node   *corev3.Node
	sent   bool
}

func (s *stream) close() {
	s.cancel()
	_ = s.conn.Close()
}

func (t *Tracker) open(ctx context.Context) (*stream, error) {
	creds := insecure.NewCredentials()
	if t.opts.TLS != nil {
		cfg := t.opts.TLS.Clone()
		if t.opts.CAFile != "" {
			pem, err := os.ReadFile(t.opts.CAFile)
			if err != nil {
				return nil, fmt.Errorf("istiod's CA: %w (istiod publishes it as ConfigMap istio-ca-root-cert in every namespace)", err)
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("istiod's CA %s: no PEM certificate in it", t.opts.CAFile)
			}
		}
		creds = credentials.NewTLS(cfg)
	}
	dial := []grpc.DialOption{grpc.WithTransportCredentials(creds), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageBytes))}
	var token string
	if t.opts.Token != nil {
		tctx, cancel := context.WithTimeout(ctx, t.opts.Timeout)
		var err error
		token, err = t.opts.Token(tctx)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("reading the token for istiod: %w", err)
		}
		dial = append(dial, grpc.WithPerRPCCredentials(bearer{token: token, secure: t.opts.TLS != nil}))
	}
	conn, err := grpc.NewClient(t.opts.Addr, dial...)
	if err != nil {
		return nil, fmt.Errorf("istiod %s: %w", t.opts.Addr, err)
	}
	sctx, cancel := context.WithCancel(ctx)
	ads, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
	if err != nil {
		cancel()
		_ = conn.Close()
		return nil, fmt.Errorf("istiod %s: opening an ADS stream: %w", t.opts.Addr, err)
	}
	id := t.opts.Identity
	if id.Namespace == "" || id.ServiceAccount == "" {
		// The token names its ServiceAccount; istiod checks the node against it.
		if id.Namespace, id.ServiceAccount, err = tokenSubject(token); err != nil {
			cancel()
			_ = conn.Close()
			return nil, err
		}
	}
	if id.Name == "" {
		id.Name = id.ServiceAccount
	}
	// Istio's node metadata: the namespace and service account istiod checks against the
	// token; generator "event" is istioctl's for debug queries. No PROXY_CONFIG, so istiod
	// does not list this connection among the proxies.
	md, err := structpb.NewStruct(map[string]any{
		"NAMESPACE": id.Namespace, "SERVICE_ACCOUNT": id.ServiceAccount, "GENERATOR": "event",
	})
	if err != nil {
		cancel()
		_ = conn.Close()
		return nil, err
	}
	node := &corev3.Node{Id: fmt.Sprintf("sidecar~0.0.0.0~%s.%s~%s.svc.cluster.local", id.Name, id.Namespace, id.Namespace), Metadata: md}
	return &stream{conn: conn, ads: ads, cancel: cancel, opened: time.Now(), node: node}, nil
}

// bearer sends the token on every RPC.
type bearer struct {
	token  string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity: over plaintext only when the caller chose it (tests, with
// istiod's XDS_AUTH_PLAINTEXT).
func (b bearer) RequireTransportSecurity() bool { return b.secure }

// poll sends one syncz request and reads its answer, within the timeout.
func (t *Tracker) poll(ctx context.Context, s *stream) *Snapshot {
	req := &discoveryv3.DiscoveryRequest{TypeUrl: SynczType}
	if !s.sent {
		req.Node = s.node
	}
	type answer struct {
		resp *discoveryv3.DiscoveryResponse
		err  error
	}
	ch := make(chan answer, 1)
	go func() {
		if err := s.ads.Send(req); err != nil {
			ch <- answer{err: err}
			return
		}
		resp, err := s.ads.Recv()
		ch <- answer{resp, err}
	}()
	t.mu.Lock()
	t.queries++
	t.mu.Unlock()
	sent := time.Now()
	timer := time.NewTimer(t.opts.Timeout)
	defer timer.Stop()
	var a answer
	select {
	case a = <-ch:
	case <-timer.C:
		s.cancel() // unblocks Recv
		a = answer{err: fmt.Errorf("no answer within %s", t.opts.Timeout)}
	case <-ctx.Done():
		s.cancel()
		a = answer{err: ctx.Err()}
	}
	if a.err != nil {
		return &Snapshot{At: time.Now(), Err: fmt.Errorf("istiod %s: syncz: %w", t.opts.Addr, a.err)}
	}
	s.sent = true
	snap, err := Decode(a.resp)
	if err != nil {
		return &Snapshot{At: time.Now(), Err: fmt.Errorf("istiod %s: %w", t.opts.Addr, err)}
	}
	t.mu.Lock()
	t.last = QueryStats{Duration: time.Since(sent), Bytes: proto.Size(a.resp), Proxies: len(a.resp.GetResources())}
	t.mu.Unlock()
	return snap
}

// Decode reads a syncz answer.
func Decode(resp *discoveryv3.DiscoveryResponse) (*Snapshot, error) {
	if resp.GetTypeUrl() != SynczType {
		return nil, fmt.Errorf("syncz: istiod answered type %q", resp.GetTypeUrl())
	}
	istiod := controlPlaneID(resp.GetControlPlane().GetIdentifier())
	snap := &Snapshot{At: time.Now(), Proxies: map[string]Proxy{}}
	for _, r := range resp.GetResources() {
		cc := &statusv3.ClientConfig{}
		if err := r.UnmarshalTo(cc); err != nil {
			return nil, fmt.Errorf("syncz: decoding a ClientConfig: %w", err)
		}
		p := Proxy{ID: cc.GetNode().GetId(), Istiod: istiod, Types: map[string]Resource{}}
		var ok bool
		if p.Pod, p.Namespace, ok = PodOf(p.ID); !ok {
			continue // not a pod's proxy (a VM, a gateway outside Kubernetes)
		}
		for _, x := range cc.GetGenericXdsConfigs() {
			res := Resource{Sync: Sync(x.GetConfigStatus().String())}
			if x.GetLastUpdated() != nil {
				res.Sent = x.GetLastUpdated().AsTime()
			}
			if e := x.GetErrorState(); e != nil {
				res.Error = e.GetDetails()
			}
			p.Types[x.GetTypeUrl()] = res
		}
		key := p.Namespace + "/" + p.Pod
		if prev, dup := snap.Proxies[key]; dup && latest(prev) > latest(p) {
			continue
		}
		snap.Proxies[key] = p
	}
	return snap, nil
}

func latest(p Proxy) int64 {
	var l int64
	for _, r := range p.Types {
		l = max(l, r.Sent.UnixNano())
	}
	return l
}

// controlPlaneID takes the istiod pod name out of the control plane identifier, a JSON object
// {"Component":"istiod","ID":"<pod>",...}; the raw text when it is not that.
func controlPlaneID(s string) string {
	const key = `"ID":"`
	if i := strings.Index(s, key); i >= 0 {
		rest := s[i+len(key):]
		if j := strings.IndexByte(rest, '"'); j >= 0 {
			return rest[:j]
		}
	}
	return s
}

// PodOf reads the pod and namespace from a proxy id as syncz names it, "<pod>.<namespace>" (the
// id part of the Envoy node id type~ip~<pod>.<namespace>~domain, which it also accepts). Pod
// names may hold dots; namespaces do not.
func PodOf(id string) (pod, namespace string, ok bool) {
	if parts := strings.Split(id, "~"); len(parts) == 4 {
		id = parts[2]
	} else if len(parts) != 1 {
		return "", "", false
	}
	i := strings.LastIndexByte(id, '.')
	if i <= 0 || i == len(id)-1 {
		return "", "", false
	}
	return id[:i], id[i+1:], true
}

func (t *Tracker) record(snap *Snapshot) {
	if t.opts.OnPoll != nil {
		t.opts.OnPoll(snap.Err)
	}
	t.mu.Lock()
	old := t.current
	if snap.Err != nil {
		t.log.Warn("reading istiod's proxy state", "err", snap.Err)
		t.failures++
		// One failed query (istiod restarting, a stream reset) does not make every
		// FilterDeployment's Programmed Unknown: the last answer stands for maxStale queries.
		if old.Err == nil && t.failures < maxStale {
			t.mu.Unlock()
			return
		}
	} else {
		t.failures = 0
	}
	t.current = snap
	t.mu.Unlock()
	if t.opts.OnChange != nil && !Same(old, snap) {
		t.opts.OnChange(old, snap)
	}
}

// Same tells whether two snapshots hold the same state (their times aside).
func Same(a, b *Snapshot) bool {
	if (a.Err == nil) != (b.Err == nil) || (a.Err != nil && a.Err.Error() != b.Err.Error()) {
		return false
	}
	return maps.EqualFunc(a.Proxies, b.Proxies, func(x, y Proxy) bool {
		return x.ID == y.ID && x.Istiod == y.Istiod && maps.Equal(x.Types, y.Types)
	})
}

// Changed lists the namespaces where a and b differ (every namespace of both when one failed).
func Changed(a, b *Snapshot) map[string]bool {
	out := map[string]bool{}
	all := (a.Err == nil) != (b.Err == nil)
	for k, p := range a.Proxies {
		if q, ok := b.Proxies[k]; all || !ok || q.ID != p.ID || !maps.Equal(q.Types, p.Types) {
			out[p.Namespace] = true
		}
	}
	for k, p := range b.Proxies {
		if _, ok := a.Proxies[k]; all || !ok {
			out[p.Namespace] = true
		}
	}
	return out
}

// tokenSubject reads the ServiceAccount a Kubernetes token names in its subject,
// system:serviceaccount:<namespace>:<name>. The token is not verified here: istiod does that.
func tokenSubject(token string) (namespace, name string, err error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return "", "", errors.New("the token for istiod is not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return "", "", fmt.Errorf("the token for istiod: %w", err)
	}
	var claims struct {
		Sub string `json:"sub"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return "", "", fmt.Errorf("the token for istiod: %w", err)
	}
	f := strings.Split(claims.Sub, ":")
	if len(f) != 4 || f[0] != "system" || f[1] != "serviceaccount" || f[2] == "" || f[3] == "" {
		return "", "", fmt.Errorf("the token for istiod names %q, not a ServiceAccount", claims.Sub)
	}
	return f[2], f[3], nil
}

// FileToken reads a token file (a projected ServiceAccount token, which the kubelet rotates)
// at every call.
func FileToken(path string) func(context.Context) (string, error) {
	return func(context.Context) (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", err
		}
		return strings.TrimSpace(string(b)), nil
	}
}

// httpClient is the client for SynczURL: TLS (with CAFile's CA, read at every connection) for
// https, a bounded timeout, no redirects (the token must go to istiod only).
func (t *Tracker) httpClient() (*http.Client, error) {
	tr := &http.Transport{Proxy: nil, MaxIdleConns: 1, IdleConnTimeout: 2 * t.opts.Interval}
	if t.opts.TLS != nil {
		base := t.opts.TLS.Clone()
		tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			cfg := base.Clone()
			if t.opts.CAFile != "" {
				pem, err := os.ReadFile(t.opts.CAFile)
				if err != nil {
					return nil, fmt.Errorf("istiod's CA: %w (istiod publishes it as ConfigMap istio-ca-root-cert in every namespace)", err)
				}
				cfg.RootCAs = x509.NewCertPool()
				if !cfg.RootCAs.AppendCertsFromPEM(pem) {
					return nil, fmt.Errorf("istiod's CA %s: no PEM certificate in it", t.opts.CAFile)
				}
			}
			d := &tls.Dialer{Config: cfg}
			return d.DialContext(ctx, network, addr)
		}
	}
	return &http.Client{Transport: tr, Timeout: t.opts.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}, nil
}

// synczEntry is one proxy of istiod's /debug/syncz (pilot/pkg/xds/debug.go SyncStatus).
type synczEntry struct {
	ProxyID   string `json:"proxy"`
	Resources map[string]struct {
		Sent      string    `json:"sent"`
		Acked     string    `json:"acked"`
		SentTime  time.Time `json:"sentTime"`
		LastError string    `json:"lastError"`
	} `json:"resources"`
}

func (t *Tracker) pollHTTP(ctx context.Context, hc *http.Client) *Snapshot {
	t.mu.Lock()
	t.queries++
	t.mu.Unlock()
	fail := func(err error) *Snapshot {
		return &Snapshot{At: time.Now(), Err: fmt.Errorf("istiod %s: %w", t.opts.SynczURL, err)}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.opts.SynczURL, nil)
	if err != nil {
		return fail(err)
	}
	if t.opts.Token != nil {
		token, err := t.opts.Token(ctx)
		if err != nil {
			return fail(fmt.Errorf("reading the token for istiod: %w", err))
		}
		req.Header.Set("Authorization", "Bearer "+token)
	}
	sent := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		return fail(err)
	}
	defer resp.Body.Close() //nolint:errcheck // read to the end or abandoned; nothing to report
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxMessageBytes+1))
	if err != nil {
		return fail(err)
	}
	if resp.StatusCode != http.StatusOK {
		hint := ""
		switch resp.StatusCode {
		case http.StatusUnauthorized:
			hint = " (istiod refused the token: audience istio-ca?)"
		case http.StatusForbidden:
			hint = " (istiod does not admit this namespace to its debug endpoints: DEBUG_ENDPOINT_AUTH_ALLOWED_NAMESPACES)"
		}
		return fail(fmt.Errorf("%s%s", resp.Status, hint))
	}
	if len(body) > maxMessageBytes {
		return fail(fmt.Errorf("answer larger than %d bytes", maxMessageBytes))
	}
	snap, n, err := DecodeHTTP(body)
	if err != nil {
		return fail(err)
	}
	t.mu.Lock()
	t.last = QueryStats{Duration: time.Since(sent), Bytes: len(body), Proxies: n}
	t.mu.Unlock()
	return snap
}

// DecodeHTTP reads istiod's /debug/syncz JSON, with the sync states istiod's xDS syncz derives
// from the same fields (pilot/pkg/xds/statusgen.go debugSyncStatus). It returns the snapshot and
// how many entries the answer had.
func DecodeHTTP(body []byte) (*Snapshot, int, error) {
	var entries []synczEntry
	if err := json.Unmarshal(body, &entries); err != nil {
		return nil, 0, fmt.Errorf("syncz: %w", err)
	}
	snap := &Snapshot{At: time.Now(), Proxies: map[string]Proxy{}}
	for _, e := range entries {
		p := Proxy{ID: e.ProxyID, Types: map[string]Resource{}}
		var ok bool
		if p.Pod, p.Namespace, ok = PodOf(e.ProxyID); !ok {
			continue
		}
		for typ, r := range e.Resources {
			res := Resource{Sent: r.SentTime, Error: r.LastError}
			switch {
			case r.LastError != "":
				res.Sync = Error
			case r.Sent == "":
				res.Sync = NotSent
			case r.Sent == r.Acked:
				res.Sync = Synced
			default:
				res.Sync = Stale
			}
			p.Types[typ] = res
		}
		key := p.Namespace + "/" + p.Pod
		if prev, dup := snap.Proxies[key]; dup && latest(prev) > latest(p) {
			continue
		}
		snap.Proxies[key] = p
	}
	return snap, len(entries), nil
}
