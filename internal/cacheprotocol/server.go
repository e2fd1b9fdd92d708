package cacheprotocol

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	wasmev1 "wasme.io/wasme/api/v1"
)

// Defaults for Options.
const (
	// DefaultAddr listens on the protocol's module port on every interface.
	DefaultAddr = ":" + Port
	// DefaultMaxStoreBytes bounds the in-memory store; modules are typically a few MiB.
	DefaultMaxStoreBytes = 256 << 20
	// DefaultMaxModuleBytes is the largest module Fetch may return.
	DefaultMaxModuleBytes = 64 << 20
	// DefaultFetchTimeout bounds one fallback Fetch, which may pull from a slow registry.
	DefaultFetchTimeout = 2 * time.Minute
	// DefaultRejectBurst and DefaultRejectRate bound the rejected requests one client address
	// may make: past the burst, an address is answered 429 without its token being looked at
	// until the bucket refills at the rate (per second).
	DefaultRejectBurst = 20
	DefaultRejectRate  = 0.1
	// maxHeaderBytes leaves room for a token of MaxTokenBytes and refuses the rest before
	// anything reads them.
	maxHeaderBytes = 4 * MaxTokenBytes
)

// Options configure a Server. Client and Authenticator are required.
type Options struct {
	// Client reads FilterDeployments through the indexes of IndexFilterDeployments (the
	// manager's cached client), since every request checks that its digest is in use.
	Client client.Reader
	// Authenticator turns a caller's bearer token into a user name; see NewTokenReviewAuthenticator.
	Authenticator Authenticator
	// AllowedUsers may fetch modules. Empty means DefaultAllowedUser.
	AllowedUsers []string
	// Fetch pulls the module of a FilterDeployment (its spec.filter.image repository at
	// status.imageDigest, with its pull options) when this replica's store lacks it. The result
	// is verified against status.moduleDigest before it is stored or served. Nil means only
	// modules given to Put are served.
	Fetch func(ctx context.Context, fd *wasmev1.FilterDeployment) ([]byte, error)
	// Addr is where Start listens. Empty means DefaultAddr.
	Addr string
	// TLSConfig is what Start and Serve serve with (see EnsureServingTLS); they refuse to
	// serve without it, since the callers' tokens would travel in the clear.
	TLSConfig *tls.Config
	// RejectBurst and RejectRate limit rejected requests per client address. Zero means
	// DefaultRejectBurst and DefaultRejectRate.
	RejectBurst int
	RejectRate  rate.Limit
	// Store holds the modules, shared with the reconciler. Nil means a store of its own of
	// MaxStoreBytes.
	Store *Store
	// MaxStoreBytes bounds a store of its own (modules no FilterDeployment names go first,
	// then the least recently used). Zero means DefaultMaxStoreBytes.
	MaxStoreBytes int64
	// MaxModuleBytes is the largest module accepted from Fetch or Put. Zero means DefaultMaxModuleBytes.
	MaxModuleBytes int64
	// FetchTimeout bounds one call of Fetch. Zero means DefaultFetchTimeout.
	FetchTimeout time.Duration
	// Registerer receives the server's metrics. Nil means controller-runtime's registry, which
	// the operator's manager serves on its metrics endpoint.
	Registerer prometheus.Registerer
	// Log is the server's logger.
	Log logr.Logger
}

// Server serves modules over HTTP. It is an http.Handler and a controller-runtime Runnable.
type Server struct {
	opts    Options
	allowed map[string]bool
	store   *Store
	fetches singleflight.Group
	metrics *metrics

	rejectMu sync.Mutex
	rejects  map[string]*rate.Limiter // client address -> its budget of rejected requests
}

// maxRejectAddrs bounds the addresses whose rejections are counted.
const maxRejectAddrs = 8192

// New checks the options and builds a Server.
func New(opts Options) (*Server, error) {
	if opts.Client == nil {
		return nil, errors.New("module server: Options.Client is required to look up FilterDeployments")
	}
	if opts.Authenticator == nil {
		return nil, errors.New("module server: Options.Authenticator is required: modules are served to authenticated node caches only")
	}
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if opts.MaxStoreBytes < 0 || opts.MaxModuleBytes < 0 || opts.FetchTimeout < 0 || opts.RejectBurst < 0 || opts.RejectRate < 0 {
		return nil, errors.New("module server: size and timeout limits must not be negative")
	}
	if opts.MaxStoreBytes == 0 {
		opts.MaxStoreBytes = DefaultMaxStoreBytes
	}
	if opts.MaxModuleBytes == 0 {
		opts.MaxModuleBytes = DefaultMaxModuleBytes
	}
	if opts.FetchTimeout == 0 {
		opts.FetchTimeout = DefaultFetchTimeout
	}
	if opts.RejectBurst == 0 {
		opts.RejectBurst = DefaultRejectBurst
	}
	if opts.RejectRate == 0 {
		opts.RejectRate = DefaultRejectRate
	}
	if len(opts.AllowedUsers) == 0 {
		opts.AllowedUsers = []string{DefaultAllowedUser}
	}
	if opts.Registerer == nil {
		opts.Registerer = ctrlmetrics.Registry
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	store := opts.Store
	if store == nil {
		store = NewStore(opts.MaxStoreBytes)
	}
	s := &Server{opts: opts, allowed: map[string]bool{}, store: store, metrics: m, rejects: map[string]*rate.Limiter{}}
	store.named = s.namedDigests
	for _, u := range opts.AllowedUsers {
		s.allowed[u] = true
	}
	s.store.onChange = func(entries int, bytes int64) {
		m.storeEntries.Set(float64(entries))
		m.storeBytes.Set(float64(bytes))
	}
	return s, nil
}

// Put stores a module the operator pulled, under its digest "sha256:<hex>". It refuses bytes
// that do not hash to the digest and modules larger than the limits.
func (s *Server) Put(digest string, data []byte) error {
	hexDigest, err := wasmev1.ModuleDigestHex(digest)
	if err != nil {
		return err
	}
	if int64(len(data)) > s.opts.MaxModuleBytes {
		return fmt.Errorf("module %s is %d bytes, more than the limit of %d", digest, len(data), s.opts.MaxModuleBytes)
	}
	return s.store.Put(hexDigest, data)
}

// Get returns the stored module with digest "sha256:<hex>". The slice must not be modified.
func (s *Server) Get(digest string) ([]byte, bool) {
	hexDigest, err := wasmev1.ModuleDigestHex(digest)
	if err != nil {
		return nil, false
	}
	return s.store.Get(hexDigest)
}

// namedDigests returns the hex digests FilterDeployment statuses name, for the store's
// eviction; nil when they cannot be listed (then nothing counts as named).
func (s *Server) namedDigests() map[string]bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var list wasmev1.FilterDeploymentList
	if err := s.opts.Client.List(ctx, &list); err != nil {
		s.opts.Log.Error(err, "listing FilterDeployments for the module store's eviction")
		return nil
	}
	named := map[string]bool{}
	for _, d := range wasmev1.NeededDigests(list.Items) {
		named[strings.TrimPrefix(d, "sha256:")] = true
	}
	return named
}

// Has reports whether the store holds the module with digest "sha256:<hex>".
func (s *Server) Has(digest string) bool {
	hexDigest, err := wasmev1.ModuleDigestHex(digest)
	return err == nil && s.store.Has(hexDigest)
}

// NeedLeaderElection is false: every operator replica serves modules.
func (s *Server) NeedLeaderElection() bool { return false }

// Start serves on Options.Addr until ctx ends.
func (s *Server) Start(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.opts.Addr)
	if err != nil {
		return fmt.Errorf("module server: listening on %s: %w", s.opts.Addr, err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves TLS on ln until ctx ends, then shuts down gracefully.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.opts.TLSConfig == nil {
		ln.Close()
		return errors.New("module server: Options.TLSConfig is required: node caches send their tokens")
	}
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    maxHeaderBytes,
		TLSConfig:         s.opts.TLSConfig,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		// Failed handshakes (a node cache with the wrong CA, a scanner) are the caller's
		// problem; they go to the debug log, not to stderr.
		ErrorLog: log.New(logWriter{s.opts.Log.V(1)}, "", 0),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	s.opts.Log.Info("serving modules", "addr", ln.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("module server: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("module server: shutting down: %w", err)
	}
	return nil
}

// ServeHTTP handles GET and HEAD of PathPrefix + "<hex>". Authentication comes before the
// digest lookup so that an unauthenticated caller cannot learn which digests are in use.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	code := s.serve(w, r)
	s.metrics.requests.WithLabelValues(codeLabel(code)).Inc()
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) int {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return httpError(w, http.StatusMethodNotAllowed, "only GET and HEAD are served")
	}
	rest, ok := DigestOf(r.URL.Path)
	if !ok {
		return httpError(w, http.StatusNotFound, "not found: modules are served at "+PathPrefix+"<hex>")
	}
	if !wasmev1.IsSHA256Hex(rest) {
		return httpError(w, http.StatusBadRequest, "malformed digest: want 64 lower-case hex characters")
	}
	if code, msg := s.authenticate(r); code != 0 {
		if code == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(1/float64(s.opts.RejectRate)))))
		}
		return httpError(w, code, msg)
	}

	// Only digests in use are served, even from the store: a module whose FilterDeployment
	// moved on must not live on through the nodes.
	fetchable, named, err := s.filterDeploymentsNaming(r.Context(), "sha256:"+rest)
	if err != nil {
		s.opts.Log.Error(err, "listing FilterDeployments")
		return httpError(w, http.StatusServiceUnavailable, "cannot list FilterDeployments")
	}
	if !named {
		return httpError(w, http.StatusNotFound, "no FilterDeployment uses this module")
	}
	data, ok := s.store.Get(rest)
	if !ok {
		if len(fetchable) == 0 {
			// Named only as the deployed module of FilterDeployments whose image has moved
			// on: their status.imageDigest no longer leads to it.
			return httpError(w, http.StatusNotFound, "this replica does not hold the module and no FilterDeployment's image leads to it")
		}
		if data, err = s.fetch(r.Context(), rest, fetchable); err != nil {
			s.opts.Log.Error(err, "fetching module", "digest", "sha256:"+rest)
			return httpError(w, http.StatusBadGateway, "the module could not be fetched")
		}
	}

	w.Header().Set("Content-Type", ContentType)
	w.Header().Set("ETag", `"sha256:`+rest+`"`)
	w.Header().Set("Cache-Control", "private, max-age=31536000, immutable")
	rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
	http.ServeContent(rec, r, "", time.Time{}, bytes.NewReader(data))
	if r.Method == http.MethodGet && rec.code < 300 {
		s.metrics.servedBytes.Add(float64(rec.written))
	}
	return rec.code
}

// authenticate returns 0 for an allowed caller, else the status code and message to send.
func (s *Server) authenticate(r *http.Request) (int, string) {
	token, ok := bearerToken(r)
	if !ok {
		return http.StatusUnauthorized, "a ServiceAccount bearer token is required"
	}
	limiter := s.rejectLimiter(r.RemoteAddr)
	if len(token) > MaxTokenBytes {
		limiter.Allow()
		return http.StatusUnauthorized, fmt.Sprintf("the bearer token is longer than %d bytes", MaxTokenBytes)
	}
	// A caller past its budget of rejections still gets in with a token accepted lately;
	// only new tokens, which would cost a TokenReview, wait.
	user, known, err := s.opts.Authenticator.Remembered(token)
	if !known {
		if limiter.Tokens() < 1 {
			return http.StatusTooManyRequests, "too many rejected requests from this address"
		}
		user, err = s.opts.Authenticator.Authenticate(r.Context(), token)
	}
	switch {
	case errors.Is(err, ErrUnauthenticated):
		limiter.Allow()
		return http.StatusUnauthorized, "the bearer token was not accepted (a projected ServiceAccount token of audience " + Audience + " is required)"
	case err != nil:
		s.opts.Log.Error(err, "authenticating a module request")
		return http.StatusServiceUnavailable, "cannot authenticate the request now"
	case !s.allowed[user]:
		return http.StatusForbidden, fmt.Sprintf("user %q may not fetch modules", user)
	}
	return 0, ""
}

// rejectLimiter returns the budget of rejected requests of the client at remoteAddr.
func (s *Server) rejectLimiter(remoteAddr string) *rate.Limiter {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	s.rejectMu.Lock()
	defer s.rejectMu.Unlock()
	l, ok := s.rejects[host]
	if !ok {
		if len(s.rejects) >= maxRejectAddrs {
			// Forgetting everyone at once errs on the side of serving.
			clear(s.rejects)
		}
		l = rate.NewLimiter(s.opts.RejectRate, s.opts.RejectBurst)
		s.rejects[host] = l
	}
	return l
}

// filterDeploymentsNaming reports whether any FilterDeployment names digest in
// status.moduleDigest or status.deployedModuleDigest, and returns those whose moduleDigest is
// digest (their status.imageDigest leads to it), ordered by namespace and name so retries try
// them in a stable order. It reads the indexes of IndexFilterDeployments.
func (s *Server) filterDeploymentsNaming(ctx context.Context, digest string) (fetchable []*wasmev1.FilterDeployment, named bool, err error) {
	var rolling, deployed wasmev1.FilterDeploymentList
	if err := s.opts.Client.List(ctx, &rolling, client.MatchingFields{ModuleDigestIndex: digest}); err != nil {
		return nil, false, fmt.Errorf("listing FilterDeployments: %w", err)
	}
	for i := range rolling.Items {
		fetchable = append(fetchable, &rolling.Items[i])
	}
	if len(fetchable) == 0 {
		if err := s.opts.Client.List(ctx, &deployed, client.MatchingFields{DeployedModuleDigestIndex: digest}); err != nil {
			return nil, false, fmt.Errorf("listing FilterDeployments: %w", err)
		}
	}
	slices.SortFunc(fetchable, func(a, b *wasmev1.FilterDeployment) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	return fetchable, len(fetchable) > 0 || len(deployed.Items) > 0, nil
}

// fetch pulls a module this replica does not hold, once per digest however many nodes ask at
// the same time. The pull runs on its own deadline so that one caller hanging up does not fail
// the others waiting for the same digest.
func (s *Server) fetch(ctx context.Context, hexDigest string, fds []*wasmev1.FilterDeployment) ([]byte, error) {
	if s.opts.Fetch == nil {
		return nil, errors.New("this replica does not hold the module and has no Fetch to pull it")
	}
	ch := s.fetches.DoChan(hexDigest, func() (any, error) {
		fetchCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.FetchTimeout)
		defer cancel()
		var errs []error
		for _, fd := range fds {
			start := time.Now()
			data, err := s.opts.Fetch(fetchCtx, fd)
			if err == nil {
				err = s.checkFetched(hexDigest, data)
			}
			s.metrics.fetchDuration.Observe(time.Since(start).Seconds())
			if err != nil {
				s.metrics.fetches.WithLabelValues("error").Inc()
				errs = append(errs, fmt.Errorf("FilterDeployment %s/%s: %w", fd.Namespace, fd.Name, err))
				continue
			}
			s.metrics.fetches.WithLabelValues("success").Inc()
			if err := s.store.Put(hexDigest, data); err != nil {
				// Too big for the store: serve it this once anyway, it is verified.
				s.opts.Log.Info("not keeping a fetched module", "digest", "sha256:"+hexDigest, "reason", err.Error())
			}
			return data, nil
		}
		return nil, errors.Join(errs...)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.([]byte), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *Server) checkFetched(hexDigest string, data []byte) error {
	if int64(len(data)) > s.opts.MaxModuleBytes {
		return fmt.Errorf("module is %d bytes, more than the limit of %d", len(data), s.opts.MaxModuleBytes)
	}
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); got != hexDigest {
		return fmt.Errorf("fetched module has digest sha256:%s, not the sha256:%s its FilterDeployment names", got, hexDigest)
	}
	return nil
}

func bearerToken(r *http.Request) (string, bool) {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

func httpError(w http.ResponseWriter, code int, msg string) int {
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="wasme-modules"`)
	}
	http.Error(w, msg, code)
	return code
}

func codeLabel(code int) string { return fmt.Sprintf("%d", code) }

// statusRecorder remembers the status code and body size for the metrics.
type statusRecorder struct {
	http.ResponseWriter
	code    int
	written int64
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(p []byte) (int, error) {
	n, err := r.ResponseWriter.Write(p)
	r.written += int64(n)
	return n, err
}

// logWriter turns the http.Server's log lines into logr messages.
type logWriter struct{ log logr.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.log.Info(strings.TrimSpace(string(p)))
	return len(p), nil
}
