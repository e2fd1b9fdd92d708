package cacheprotocol

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// DefaultTokenFile is where Kubernetes projects the pod's ServiceAccount token.
const DefaultTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"

// Client fetches modules from the operator's module server, authenticated with the node cache's
// ServiceAccount token (docs/design/node-cache-protocol.md, rule 2).
type Client struct {
	base      *url.URL
	tokenFile string
	userAgent string
	client    *http.Client
}

// NewClient returns a Client of the module server at baseURL (for example
// "http://wasme-operator.wasme.svc:9980"). The token is read from tokenFile on every fetch,
// because the kubelet rotates projected tokens. nodeName goes into the User-Agent.
func NewClient(baseURL, tokenFile, nodeName string) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("operator URL %q: %w", baseURL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("operator URL %q: want http://host:port or https://host:port", baseURL)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("operator URL %q: must not have a query or fragment", baseURL)
	}
	if tokenFile == "" {
		return nil, errors.New("a token file is required: the operator serves modules to authenticated node caches only")
	}
	return &Client{
		base:      u,
		tokenFile: tokenFile,
		userAgent: UserAgent(nodeName),
		client: &http.Client{
			// The module server never redirects; following one could leak the token elsewhere.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			Transport: &http.Transport{
				Proxy:                 http.ProxyFromEnvironment,
				ResponseHeaderTimeout: 2 * time.Minute,
				IdleConnTimeout:       90 * time.Second,
			},
		},
	}, nil
}

// Fetch returns a reader of the module whose sha256 is hexDigest; the caller closes it and
// verifies the bytes.
func (c *Client) Fetch(ctx context.Context, hexDigest string) (io.ReadCloser, error) {
	token, err := os.ReadFile(c.tokenFile)
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
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching from the operator: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		return nil, fmt.Errorf("the operator answered %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	return resp.Body, nil
}
