// Package registrytest starts a real OCI registry (Debian's docker-registry, the CNCF
// distribution server) on loopback for tests: plain HTTP, with htpasswd basic auth, and with
// TLS from a CA generated per registry. It also offers a fault-injecting reverse proxy to put
// in front of it.
package registrytest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// BinaryEnv names the environment variable that overrides the registry binary's path.
const BinaryEnv = "WASME_TEST_REGISTRY"

// DefaultBinary is where Debian's docker-registry package installs the server.
const DefaultBinary = "/usr/bin/docker-registry"

// Options choose how the registry is started.
type Options struct {
	// Users turns on htpasswd basic auth with these user → password pairs.
	Users map[string]string
	// TLS serves HTTPS with a certificate for 127.0.0.1 and localhost from a fresh CA.
	TLS bool
}

// Registry is a running registry.
type Registry struct {
	// Host is "127.0.0.1:port", the registry part of image references.
	Host string
	// Dir holds the registry's storage, configuration and log.
	Dir string
	// CAFile is the PEM CA certificate that signed the server certificate (TLS only).
	CAFile string
	// CAPEM is the content of CAFile (TLS only).
	CAPEM []byte
	// TLS reports whether the registry serves HTTPS.
	TLS bool
	// User and Password are one of the configured users (auth only), for convenience.
	User, Password string

	cmd  *exec.Cmd
	done chan struct{}
}

// Start starts a registry and stops it when the test ends. It fails the test when the binary
// is missing: the tests need the real server, not a stand-in (.ci/run installs the package).
func Start(t testing.TB, opts Options) *Registry {
	t.Helper()
	bin := os.Getenv(BinaryEnv)
	if bin == "" {
		bin = DefaultBinary
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("registrytest: %s not found (apt-get install docker-registry, or set %s): %v", bin, BinaryEnv, err)
	}
	dir := t.TempDir()
	r := &Registry{Dir: dir, TLS: opts.TLS}
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n", filepath.Join(dir, "data"))
	fmt.Fprintf(&cfg, "http:\n  addr: ADDR\n  secret: %s\n", randomHex(t))
	if opts.TLS {
		caPEM, certFile, keyFile := writeTLS(t, dir)
		r.CAFile, r.CAPEM = filepath.Join(dir, "ca.pem"), caPEM
		fmt.Fprintf(&cfg, "  tls:\n    certificate: %s\n    key: %s\n", certFile, keyFile)
	}
	if len(opts.Users) > 0 {
		var ht bytes.Buffer
		for u, p := range opts.Users {
			h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&ht, "%s:%s\n", u, h)
			r.User, r.Password = u, p
		}
		htFile := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(htFile, ht.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&cfg, "auth:\n  htpasswd:\n    realm: wasme-test\n    path: %s\n", htFile)
	}
	// A port picked by the kernel may be taken again before the registry binds it; a few
	// attempts make that race harmless.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		host := freePort(t)
		cfgFile := filepath.Join(dir, "config.yml")
		if err := os.WriteFile(cfgFile, []byte(strings.Replace(cfg.String(), "ADDR", host, 1)), 0o600); err != nil {
			t.Fatal(err)
		}
		if lastErr = r.start(bin, cfgFile, host); lastErr == nil {
			t.Cleanup(r.Stop)
			return r
		}
	}
	t.Fatalf("registrytest: registry did not start: %v", lastErr)
	return nil
}

func (r *Registry) start(bin, cfgFile, host string) error {
	logf, err := os.OpenFile(filepath.Join(r.Dir, "registry.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, "serve", cfgFile)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	r.cmd, r.done, r.Host = cmd, done, host
	client := r.HTTPClient()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			log, _ := os.ReadFile(filepath.Join(r.Dir, "registry.log"))
			return fmt.Errorf("registry exited: %s", lastLines(string(log), 5))
		default:
		}
		resp, err := client.Get(r.URL() + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.Stop()
	return fmt.Errorf("registry on %s not ready after 15s", host)
}

// Stop stops the registry; it is safe to call more than once. Tests use it to simulate a
// registry that is down.
func (r *Registry) Stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	select {
	case <-r.done:
		return
	default:
	}
	_ = r.cmd.Process.Kill()
	<-r.done
}

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

func freePort(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func randomHex(t testing.TB) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// writeTLS writes a CA and a server certificate for 127.0.0.1 and localhost signed by it.
func writeTLS(t testing.TB, dir string) (caPEM []byte, certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "wasme test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.IPv6loopback},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	certFile, keyFile = filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	for f, b := range map[string][]byte{
		filepath.Join(dir, "ca.pem"): caPEM,
		certFile:                     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyFile:                      pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return caPEM, certFile, keyFile
}
