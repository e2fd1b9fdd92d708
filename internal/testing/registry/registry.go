// Package registry starts a real OCI registry, the CNCF distribution registry built from its
// pinned Go module (hack/tools/registry), on loopback for tests, the demo and the bench: plain
// HTTP, with htpasswd basic auth, or with TLS from a CA made per registry. It also offers a
// fault-injecting reverse proxy to put in front of it (proxy.go). This is the one registry
// launcher of the repository.
package registry

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"wasme.io/wasme/internal/testing/proc"
	"wasme.io/wasme/internal/testing/tools"
)

// Options choose how the registry is started.
type Options struct {
	// Dir holds the registry's storage, configuration, certificates and log. Start requires it;
	// StartT uses a test directory when it is empty.
	Dir string
	// Users turns on htpasswd basic auth with these user → password pairs.
	Users map[string]string
	// TLS serves HTTPS with a certificate for 127.0.0.1 and localhost from a fresh CA.
	TLS bool
	// Progress receives the registry build's output on a first run (nil: discarded).
	Progress io.Writer
}

// Registry is a running registry.
type Registry struct {
	// Host is "127.0.0.1:port", the registry part of image references.
	Host string
	// Dir holds the registry's storage, configuration and log.
	Dir string
	// CAFile is the PEM CA certificate that signed the server certificate (TLS only), for
	// `wasme push --ca-file` and `wasme operator --ca-file`.
	CAFile string
	// CAPEM is the content of CAFile (TLS only).
	CAPEM []byte
	// TLS reports whether the registry serves HTTPS.
	TLS bool
	// User and Password are one of the configured users (auth only), for convenience.
	User, Password string

	proc *proc.Process
}

// Start starts a registry in o.Dir. Stop it when done.
func Start(ctx context.Context, o Options) (*Registry, error) {
	if o.Dir == "" {
		return nil, fmt.Errorf("registry: Options.Dir is required")
	}
	bin, err := tools.Registry(o.Progress)
	if err != nil {
		return nil, fmt.Errorf("the registry binary: %w", err)
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	r := &Registry{Dir: o.Dir, TLS: o.TLS}
	secret := make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n", filepath.Join(o.Dir, "data"))
	fmt.Fprintf(&cfg, "http:\n  addr: ADDR\n  secret: %s\n", hex.EncodeToString(secret))
	if o.TLS {
		caPEM, certFile, keyFile, err := writeTLS(o.Dir)
		if err != nil {
			return nil, err
		}
		r.CAFile, r.CAPEM = filepath.Join(o.Dir, "ca.pem"), caPEM
		fmt.Fprintf(&cfg, "  tls:\n    certificate: %s\n    key: %s\n", certFile, keyFile)
	}
	if len(o.Users) > 0 {
		var ht bytes.Buffer
		for u, p := range o.Users {
			h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
			if err != nil {
				return nil, err
			}
			fmt.Fprintf(&ht, "%s:%s\n", u, h)
			r.User, r.Password = u, p
		}
		htFile := filepath.Join(o.Dir, "htpasswd")
		if err := os.WriteFile(htFile, ht.Bytes(), 0o600); err != nil {
			return nil, err
		}
		fmt.Fprintf(&cfg, "auth:\n  htpasswd:\n    realm: wasme-test\n    path: %s\n", htFile)
	}
	// A port picked by the kernel may be taken again before the registry binds it; a few
	// attempts make that race harmless.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		host, err := proc.FreeAddr()
		if err != nil {
			return nil, err
		}
		cfgFile := filepath.Join(o.Dir, "config.yml")
		if err := os.WriteFile(cfgFile, []byte(strings.Replace(cfg.String(), "ADDR", host, 1)), 0o600); err != nil {
			return nil, err
		}
		// No tracing exporter: distribution v3 would otherwise try an OTLP endpoint and log
		// its failures.
		p, err := proc.Start("registry", bin, []string{"serve", cfgFile}, filepath.Join(o.Dir, "registry.log"),
			proc.Options{Dir: o.Dir, Env: []string{"OTEL_TRACES_EXPORTER=none", "OTEL_SDK_DISABLED=true"}})
		if err != nil {
			return nil, err
		}
		r.Host = host
		lastErr = p.WaitHTTP(ctx, r.HTTPClient(), r.URL()+"/v2/", 30*time.Second, func(s int) bool {
			return s == http.StatusOK || s == http.StatusUnauthorized
		})
		if lastErr == nil {
			r.proc = p
			return r, nil
		}
		p.Kill()
	}
	return nil, fmt.Errorf("the registry did not start: %w", lastErr)
}

// StartT starts a registry for a test and stops it when the test ends. A missing or failing
// registry fails the test: the tests need the real server, not a stand-in.
func StartT(t testing.TB, o Options) *Registry {
	t.Helper()
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	r, err := Start(context.Background(), o)
	if err != nil {
		t.Fatalf("registry: %v", err)
	}
	t.Cleanup(r.Stop)
	return r
}

// Stop stops the registry at once; it is safe to call more than once. Tests use it to
// simulate a registry that is down.
func (r *Registry) Stop() {
	if r != nil {
		r.proc.Kill()
	}
}

// Pid is the registry's process id.
func (r *Registry) Pid() int { return r.proc.Pid() }

// URL is the registry's base URL, http:// or https://.
func (r *Registry) URL() string {
	if r.TLS {
		return "https://" + r.Host
	}
	return "http://" + r.Host
}

// HTTPClient is a client that trusts the registry's CA.
func (r *Registry) HTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	if r.TLS {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(r.CAPEM)
		t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: t, Timeout: 10 * time.Second}
}

// Log returns the registry's log, for failure messages.
func (r *Registry) Log() string {
	b, _ := os.ReadFile(filepath.Join(r.Dir, "registry.log"))
	return string(b)
}

// Version is the registry binary's version line, for reports.
func Version() string {
	bin, err := tools.Registry(nil)
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	out, err := execOutput(bin, "--version")
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	return out
}
