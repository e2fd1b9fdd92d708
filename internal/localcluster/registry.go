package localcluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// RegistryBinaryEnv overrides the path of Debian's docker-registry (the CNCF distribution
// server), the same variable internal/registrytest reads.
const RegistryBinaryEnv = "WASME_TEST_REGISTRY"

// Registry is a running docker-registry serving HTTPS on loopback with a CA of its own, so
// images are pushed and pulled as from a real registry (TLS verified), not over plain HTTP.
type Registry struct {
	// Host is "127.0.0.1:port", the registry part of image references.
	Host string
	// CAPEM is the CA certificate that signed the server's certificate.
	CAPEM []byte
	// CAFile holds CAPEM (for `wasme push --ca-file`, `wasme operator --ca-file`).
	CAFile string

	proc *process
}

func startRegistry(ctx context.Context, dir string) (*Registry, error) {
	bin := os.Getenv(RegistryBinaryEnv)
	if bin == "" {
		bin = "/usr/bin/docker-registry"
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("the registry binary %s is missing (apt-get install docker-registry, or set %s): %w", bin, RegistryBinaryEnv, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	caPEM, certPEM, keyPEM, err := newServingCert()
	if err != nil {
		return nil, err
	}
	r := &Registry{CAPEM: caPEM, CAFile: filepath.Join(dir, "ca.pem")}
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	for f, b := range map[string][]byte{r.CAFile: caPEM, certFile: certPEM, keyFile: keyPEM} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			return nil, err
		}
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	var lastErr error
	// A port picked by the kernel may be taken again before the registry binds it.
	for attempt := 0; attempt < 5; attempt++ {
		host, err := freeAddr()
		if err != nil {
			return nil, err
		}
		secret := make([]byte, 16)
		_, _ = rand.Read(secret)
		cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
  secret: %s
  tls:
    certificate: %s
    key: %s
`, filepath.Join(dir, "data"), host, hex.EncodeToString(secret), certFile, keyFile)
		cfgFile := filepath.Join(dir, "config.yml")
		if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
			return nil, err
		}
		p, err := startProcess("registry", bin, []string{"serve", cfgFile}, nil, dir, filepath.Join(dir, "registry.log"))
		if err != nil {
			return nil, err
		}
		lastErr = waitHTTP(ctx, p, hc, "https://"+host+"/v2/", 30*time.Second)
		if lastErr == nil {
			r.Host, r.proc = host, p
			return r, nil
		}
		p.stop()
	}
	return nil, fmt.Errorf("docker-registry did not start: %w", lastErr)
}

// Stop stops the registry.
func (r *Registry) Stop() {
	if r != nil && r.proc != nil {
		r.proc.stop()
	}
}

// newServingCert makes a CA and a certificate for 127.0.0.1 and localhost signed by it.
func newServingCert() (caPEM, certPEM, keyPEM []byte, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "wasme local registry CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(7 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(7 * 24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, nil, nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), nil
}

// waitHTTP polls url until it answers 2xx, the process exits, or timeout passes.
func waitHTTP(ctx context.Context, p *process, hc *http.Client, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				return nil
			}
			err = fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		last = err
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited (%v); log tail:\n%s", p.name, p.err, p.logTail(40))
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("%s not ready at %s: %w", p.name, url, ctx.Err()), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// freeAddr returns a loopback address with a port the kernel just had free.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
