package wasmimage

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"
	"oras.land/oras-go/v2/registry/remote/retry"
)

// DefaultMaxModuleSize is the default limit on a module's size, and on any blob read for it.
const DefaultMaxModuleSize int64 = 256 << 20

// DefaultRetries is how often a request failing with a 5xx, 408, 429 or a network error is
// retried, with exponential backoff, before the error is returned.
const DefaultRetries = 4

// maxConfigSize bounds runtime-config and image config blobs; they are tiny JSON documents.
const maxConfigSize = 1 << 20

// maxManifestSize bounds manifests and indexes, as oras-go does by default.
const maxManifestSize = 4 << 20

// Option configures Pull, Resolve, Push and Copy.
type Option func(*options)

type options struct {
	cred          *auth.Credential
	stores        []credentials.Store
	plainHTTP     bool
	insecure      bool
	caFiles       []string
	caPEMs        [][]byte
	maxModuleSize int64
	layout        Layout
	retries       int
	minWait       time.Duration
	transport     http.RoundTripper
	userAgent     string
	egress        *EgressPolicy
	progress      Progress
	err           error
}

func newOptions(opts []Option) *options {
	o := &options{maxModuleSize: DefaultMaxModuleSize, retries: DefaultRetries, minWait: 200 * time.Millisecond, userAgent: "wasme"}
	for _, f := range opts {
		f(o)
	}
	return o
}

// WithCredentials uses a username and password (or, with an empty username, an identity
// token as password) for the image's registry. They win over any credential store.
func WithCredentials(username, password string) Option {
	return func(o *options) {
		c := auth.Credential{Username: username, Password: password}
		if username == "" {
			c = auth.Credential{RefreshToken: password}
		}
		o.cred = &c
	}
}

// WithCredentialStore adds a credential store (docker config file, credential helper, memory)
// consulted in order after the earlier ones.
func WithCredentialStore(s credentials.Store) Option {
	return func(o *options) {
		if s != nil {
			o.stores = append(o.stores, s)
		}
	}
}

// WithDockerConfigJSON uses the credentials of a docker config.json document: the data of a
// kubernetes.io/dockerconfigjson Secret (key .dockerconfigjson) or of a legacy
// kubernetes.io/dockercfg Secret (key .dockercfg, the bare map of servers). A document that
// does not parse makes the operation fail with that error.
func WithDockerConfigJSON(data []byte) Option {
	return func(o *options) {
		s, err := CredentialStoreFromDockerConfigJSON(data)
		if err != nil {
			o.err = errors.Join(o.err, err)
			return
		}
		o.stores = append(o.stores, s)
	}
}

// WithDefaultCredentials uses, in order, wasme's own credentials file (the original's
// ~/.wasme/credentials.json; skipped when wasmeFile is "") and docker's config.json
// ($DOCKER_CONFIG/config.json or ~/.docker/config.json) with its credential helpers.
// Missing files are no error: the registry is then asked anonymously.
func WithDefaultCredentials(wasmeFile string) Option {
	return func(o *options) {
		if wasmeFile != "" {
			if _, err := os.Stat(wasmeFile); err == nil {
				s, err := credentials.NewStore(wasmeFile, credentials.StoreOptions{})
				if err != nil {
					o.err = errors.Join(o.err, fmt.Errorf("credentials file %s: %w", wasmeFile, err))
					return
				}
				o.stores = append(o.stores, s)
			}
		}
		s, err := credentials.NewStoreFromDocker(credentials.StoreOptions{})
		if err != nil {
			o.err = errors.Join(o.err, fmt.Errorf("docker config: %w", err))
			return
		}
		o.stores = append(o.stores, s)
	}
}

// WithPlainHTTP talks HTTP instead of HTTPS to the registry.
func WithPlainHTTP(on bool) Option { return func(o *options) { o.plainHTTP = on } }

// WithInsecureSkipVerify accepts any TLS certificate from the registry.
func WithInsecureSkipVerify(on bool) Option { return func(o *options) { o.insecure = on } }

// WithCAFile trusts the PEM certificates in path in addition to the system roots.
func WithCAFile(path string) Option {
	return func(o *options) {
		if path != "" {
			o.caFiles = append(o.caFiles, path)
		}
	}
}

// WithCAPEM trusts the PEM certificates given in addition to the system roots.
func WithCAPEM(pem []byte) Option {
	return func(o *options) {
		if len(pem) > 0 {
			o.caPEMs = append(o.caPEMs, pem)
		}
	}
}

// WithMaxModuleSize sets the largest module (and blob) accepted, DefaultMaxModuleSize if
// n <= 0. It is enforced while reading, also through gzip and tar.
func WithMaxModuleSize(n int64) Option {
	return func(o *options) {
		if n <= 0 {
			n = DefaultMaxModuleSize
		}
		o.maxModuleSize = n
	}
}

// WithLayout chooses the layout Push writes; LayoutWasme by default.
func WithLayout(l Layout) Option { return func(o *options) { o.layout = l } }

// WithRetries sets how often a failed request is retried (0: never).
func WithRetries(n int) Option {
	return func(o *options) {
		if n >= 0 {
			o.retries = n
		}
	}
}

// WithTransport sets the HTTP transport under retries and auth, for proxies and tests. The
// TLS options then have no effect.
func WithTransport(rt http.RoundTripper) Option { return func(o *options) { o.transport = rt } }

// WithEgressPolicy makes every connection (registry, token realm, redirect) pass p when it
// is dialed; see EgressPolicy. It does not combine with WithTransport.
func WithEgressPolicy(p *EgressPolicy) Option { return func(o *options) { o.egress = p } }

// WithUserAgent sets the User-Agent sent to registries.
func WithUserAgent(ua string) Option { return func(o *options) { o.userAgent = ua } }

func (o *options) baseTransport() (http.RoundTripper, error) {
	if o.transport != nil {
		if o.egress != nil {
			return nil, errors.New("an egress policy needs wasme's own transport (WithTransport was given)")
		}
		return o.transport, nil
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	if o.egress != nil {
		t.DialContext = o.egress.DialContext
		t.Proxy = nil
	}
	if o.insecure || len(o.caFiles) > 0 || len(o.caPEMs) > 0 {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: o.insecure} //nolint:gosec // only when the user asks for it
		if len(o.caFiles) > 0 || len(o.caPEMs) > 0 {
			pool, err := x509.SystemCertPool()
			if err != nil || pool == nil {
				pool = x509.NewCertPool()
			}
			pems := o.caPEMs
			for _, f := range o.caFiles {
				b, err := os.ReadFile(f)
				if err != nil {
					return nil, fmt.Errorf("CA file: %w", err)
				}
				pems = append(pems, b)
			}
			for i, p := range pems {
				if !pool.AppendCertsFromPEM(p) {
					return nil, fmt.Errorf("CA file: no PEM certificate in CA input %d", i+1)
				}
			}
			cfg.RootCAs = pool
		}
		t.TLSClientConfig = cfg
	}
	return t, nil
}

// client makes the auth client for one registry: the static credentials (WithCredentials)
// go to that registry only, store credentials to the host they are keyed by, and the
// credential guard keeps both from other hosts (see credentialGuard).
func (o *options) client(registry string) (*auth.Client, error) {
	if o.err != nil {
		return nil, o.err
	}
	base, err := o.baseTransport()
	if err != nil {
		return nil, err
	}
	guard := newCredentialGuard(base, o.transport == nil && !o.plainHTTP && !o.insecure)
	rt := retry.NewTransport(guard)
	policy := &retry.GenericPolicy{
		Retryable: retry.DefaultPredicate,
		Backoff:   retry.DefaultBackoff,
		MinWait:   o.minWait,
		MaxWait:   3 * time.Second,
		MaxRetry:  o.retries,
	}
	rt.Policy = func() retry.Policy { return policy }
	c := &auth.Client{
		Client: &http.Client{Transport: rt},
		Cache:  auth.NewCache(),
		Header: http.Header{"User-Agent": {o.userAgent}},
	}
	stores := o.stores
	static := o.cred
	c.Credential = func(ctx context.Context, hostport string) (auth.Credential, error) {
		if static != nil {
			if canonHost(hostport) != canonHost(registry) {
				return auth.EmptyCredential, nil
			}
			guard.bind(hostport, *static)
			return *static, nil
		}
		addr := credentials.ServerAddressFromHostname(hostport)
		for _, s := range stores {
			cred, err := s.Get(ctx, addr)
			if err != nil {
				return auth.EmptyCredential, fmt.Errorf("credentials for %s: %w", hostport, err)
			}
			if cred != auth.EmptyCredential {
				guard.bind(hostport, cred)
				return cred, nil
			}
		}
		return auth.EmptyCredential, nil
	}
	return c, nil
}

func (o *options) repository(ref Reference) (*remote.Repository, error) {
	repo, err := remote.NewRepository(ref.orasRepo())
	if err != nil {
		return nil, fmt.Errorf("invalid reference %s: %w", ref, err)
	}
	c, err := o.client(repo.Reference.Host())
	if err != nil {
		return nil, err
	}
	repo.Client = c
	repo.PlainHTTP = o.plainHTTP
	repo.MaxMetadataBytes = maxManifestSize
	// Wasm images carry no referrers; skipping the GC keeps pushes to one round of requests.
	repo.SkipReferrersGC = true
	return repo, nil
}

// Registry returns an oras-go registry client configured by opts (auth, TLS, retries), for
// callers that need registry-level calls such as a login check.
func Registry(host string, opts ...Option) (*remote.Registry, error) {
	o := newOptions(opts)
	reg, err := remote.NewRegistry(host)
	if err != nil {
		return nil, fmt.Errorf("invalid registry %q: %w", host, err)
	}
	c, err := o.client(reg.Reference.Host())
	if err != nil {
		return nil, err
	}
	reg.Client = c
	reg.PlainHTTP = o.plainHTTP
	return reg, nil
}
