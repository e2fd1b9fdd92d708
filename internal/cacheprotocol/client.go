package cacheprotocol

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

const (
	// DefaultTokenFile is where the DaemonSet projects the node cache's token of audience
	// Audience (a projected volume; the kubelet renews it before it expires).
	DefaultTokenFile = "/var/run/secrets/wasme.io/module-token/token"
	// DefaultCAFile is where the DaemonSet mounts ConfigMap DefaultCAConfigMap.
	DefaultCAFile = "/var/run/secrets/wasme.io/module-ca/" + CAKey
	// DefaultURL is the module server's Service in namespace wasme.
	DefaultURL = "https://" + ServiceName + ".wasme.svc:" + Port
)

// ClientOptions configure a Client.
type ClientOptions struct {
	// URL is the module server's base URL, https://host:port.
	URL string
	// TokenFile holds the ServiceAccount token to present, read again on every fetch because
	// the kubelet rotates projected tokens.
	TokenFile string
	// CAFile holds the PEM CA certificates the module server's certificate must chain to,
	// read again when the file changes (the kubelet updates a mounted ConfigMap in place).
	CAFile string
	// ServerName is the name the certificate must have. Empty means the URL's host.
	ServerName string
	// NodeName goes into the User-Agent.
	NodeName string
}

// Client fetches modules from the operator's module server over TLS, authenticated with the
// node cache's ServiceAccount token (docs/design/node-cache-protocol.md, rule 2).
type Client struct {
	o         ClientOptions
	base      *url.URL
	userAgent string

	mu     sync.Mutex
	caPEM  []byte // what client was built with
	client *http.Client
}

// NewClient checks the options and returns a Client. The CA file is read here, so that a
// missing or malformed one is a start-up error.
func NewClient(o ClientOptions) (*Client, error) {
	u, err := url.Parse(o.URL)
	if err != nil {
		return nil, fmt.Errorf("operator URL %q: %w", o.URL, err)
	}
	if u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("operator URL %q: want https://host:port (the token must not travel in the clear)", o.URL)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("operator URL %q: must not have a query or fragment", o.URL)
	}
	if o.TokenFile == "" {
		return nil, errors.New("a token file is required: the operator serves modules to authenticated node caches only")
	}
	if o.CAFile == "" {
		return nil, errors.New("a CA file is required to verify the operator's module server")
	}
	if o.ServerName == "" {
		o.ServerName = u.Hostname()
	}
	c := &Client{o: o, base: u, userAgent: UserAgent(o.NodeName)}
	if _, err := c.httpClient(); err != nil {
		return nil, err
	}
	return c, nil
}

// httpClient returns the HTTP client for the CA file's current content.
func (c *Client) httpClient() (*http.Client, error) {
	caPEM, err := os.ReadFile(c.o.CAFile)
	if err != nil {
		return nil, fmt.Errorf("reading the module server's CA: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client != nil && bytes.Equal(caPEM, c.caPEM) {
		return c.client, nil
	}
	pool, ok := caPool(caPEM)
	if !ok {
		return nil, fmt.Errorf("the module server's CA %s holds no PEM certificate", c.o.CAFile)
	}
	if c.client != nil {
		c.client.CloseIdleConnections()
	}
	c.caPEM = caPEM
	c.client = &http.Client{
		// The module server never redirects; following one could leak the token elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			TLSClientConfig:       &tls.Config{RootCAs: pool, ServerName: c.o.ServerName, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout:   30 * time.Second,
			ResponseHeaderTimeout: 2 * time.Minute,
			IdleConnTimeout:       90 * time.Second,
		},
	}
	return c.client, nil
}

// Fetch returns a reader of the module whose sha256 is hexDigest; the caller closes it and
// verifies the bytes.
func (c *Client) Fetch(ctx context.Context, hexDigest string) (io.ReadCloser, error) {
	hc, err := c.httpClient()
	if err != nil {
		return nil, err
	}
	token, err := os.ReadFile(c.o.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("reading the ServiceAccount token: %w", err)
	}
	u := c.base.JoinPath(ModulePath(hexDigest))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	req.Header.Set("User-Agent", c.userAgent)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fetchError(err, c.o.CAFile)
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		return nil, fmt.Errorf("the operator answered %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	return resp.Body, nil
}

// fetchError says what a failed TLS verification means for whoever reads the NodeCache.
func fetchError(err error, caFile string) error {
	var unknown x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var verify *tls.CertificateVerificationError
	switch {
	case errors.As(err, &unknown):
		return fmt.Errorf("the module server's certificate is not signed by the CA in %s (is ConfigMap %s current?): %w", caFile, DefaultCAConfigMap, err)
	case errors.As(err, &hostname):
		return fmt.Errorf("the module server's certificate is not for this name: %w", err)
	case errors.As(err, &invalid), errors.As(err, &verify):
		return fmt.Errorf("the module server's certificate is not valid: %w", err)
	}
	return fmt.Errorf("fetching from the operator: %w", err)
}
