package wasmimage

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"oras.land/oras-go/v2/registry/remote/auth"
)

// credentialGuard sits under oras-go's auth client and sees every request it sends: registry
// calls, token requests and redirects. It keeps each credential to the registry it was
// handed out for. oras-go sends a registry's username and password to the token realm that
// registry's challenge names, whatever host that is; the guard lets that happen only when
// the realm is on the registry's own host, or when the challenge is authentic (it came over
// HTTPS with a verified certificate, and the realm is HTTPS too) — that is how registries
// with a separate token service work (registry.example.com, realm auth.example.com), and the registry that
// names the realm is the one the credential was given to anyway. The realm host must also
// pass the egress policy, which the dialer enforces.
//
// A Basic header bound for another host is removed (the request goes on anonymously, as a
// presigned blob URL expects); a token request that would post a password or refresh token
// to another host fails.
type credentialGuard struct {
	next http.RoundTripper
	// verifiedTLS: challenges over HTTPS are authentic (no plain HTTP, no skipped
	// verification, wasme's own transport).
	verifiedTLS bool

	mu sync.Mutex
	// owners maps each secret (basic token, password, refresh token) to the registries it
	// was handed out for.
	owners map[string]map[string]bool
	// realms maps a registry to the other hosts its authentic challenges named as realm.
	realms map[string]map[string]bool
}

func newCredentialGuard(next http.RoundTripper, verifiedTLS bool) *credentialGuard {
	return &credentialGuard{next: next, verifiedTLS: verifiedTLS, owners: map[string]map[string]bool{}, realms: map[string]map[string]bool{}}
}

// canonHost is host[:port] lower-cased without a default port, the way oras-go names a
// registry ("registry.example.com", "127.0.0.1:5000").
func canonHost(h string) string {
	h = strings.ToLower(h)
	for _, p := range []string{":443", ":80"} {
		h = strings.TrimSuffix(h, p)
	}
	return h
}

// bind records that c was handed out for registry.
func (g *credentialGuard) bind(registry string, c auth.Credential) {
	registry = canonHost(registry)
	g.mu.Lock()
	defer g.mu.Unlock()
	add := func(secret string) {
		if secret == "" {
			return
		}
		if g.owners[secret] == nil {
			g.owners[secret] = map[string]bool{}
		}
		g.owners[secret][registry] = true
	}
	if c.Username != "" || c.Password != "" {
		add(basicToken(c.Username, c.Password))
	}
	add(c.Password)
	add(c.RefreshToken)
	add(c.AccessToken)
}

// mayCarry reports whether secret may be sent to host; secrets the guard never handed out
// (tokens a realm issued) may.
func (g *credentialGuard) mayCarry(secret, host string) (ok bool, owner string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	owners, known := g.owners[secret]
	if !known {
		return true, ""
	}
	for o := range owners {
		if o == host || g.realms[o][host] {
			return true, o
		}
		owner = o
	}
	return false, owner
}

func (g *credentialGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	host := canonHost(req.URL.Host)
	if a := req.Header.Get("Authorization"); len(a) > 6 && strings.EqualFold(a[:6], "basic ") {
		if ok, _ := g.mayCarry(strings.TrimSpace(a[6:]), host); !ok {
			req = req.Clone(req.Context())
			req.Header.Del("Authorization")
		}
	}
	if bearer := req.Header.Get("Authorization"); len(bearer) > 7 && strings.EqualFold(bearer[:7], "bearer ") {
		// An identity token handed out as access token is a credential too.
		if ok, _ := g.mayCarry(strings.TrimSpace(bearer[7:]), host); !ok {
			req = req.Clone(req.Context())
			req.Header.Del("Authorization")
		}
	}
	if req.Method == http.MethodPost && req.Body != nil && req.Body != http.NoBody {
		if ct, _, _ := mime.ParseMediaType(req.Header.Get("Content-Type")); ct == "application/x-www-form-urlencoded" {
			// Token requests are small; a larger body is no OAuth2 token request of oras-go.
			b, err := io.ReadAll(io.LimitReader(req.Body, 1<<20))
			req.Body.Close()
			if err != nil {
				return nil, err
			}
			form, _ := url.ParseQuery(string(b))
			for _, k := range []string{"password", "refresh_token"} {
				if v := form.Get(k); v != "" {
					if ok, owner := g.mayCarry(v, host); !ok {
						return nil, &NotAllowedError{Host: req.URL.Host, Detail: fmt.Sprintf(
							"the credentials of %s would be posted to a token realm on another host whose challenge was not authentic (plain HTTP or unverified TLS)", owner)}
					}
				}
			}
			req = req.Clone(req.Context())
			req.Body = io.NopCloser(bytes.NewReader(b))
			req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
		}
	}
	resp, err := g.next.RoundTrip(req)
	if err == nil && resp.StatusCode == http.StatusUnauthorized {
		g.learn(req, resp)
	}
	return resp, err
}

// learn approves the realm of an authentic bearer challenge.
func (g *credentialGuard) learn(req *http.Request, resp *http.Response) {
	if !g.verifiedTLS || req.URL.Scheme != "https" || resp.TLS == nil {
		return
	}
	for _, ch := range resp.Header.Values("Www-Authenticate") {
		realm := challengeRealm(ch)
		if realm == "" {
			continue
		}
		u, err := url.Parse(realm)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			continue
		}
		reg, rh := canonHost(req.URL.Host), canonHost(u.Host)
		g.mu.Lock()
		if g.realms[reg] == nil {
			g.realms[reg] = map[string]bool{}
		}
		g.realms[reg][rh] = true
		g.mu.Unlock()
	}
}

// challengeRealm returns the realm parameter of a Bearer challenge, "" if there is none.
func challengeRealm(ch string) string {
	scheme, rest, _ := strings.Cut(strings.TrimSpace(ch), " ")
	if !strings.EqualFold(scheme, "bearer") {
		return ""
	}
	for rest != "" {
		rest = strings.TrimLeft(rest, " ,")
		key, after, ok := strings.Cut(rest, "=")
		if !ok {
			return ""
		}
		var val string
		if strings.HasPrefix(after, `"`) {
			end := strings.Index(after[1:], `"`)
			if end < 0 {
				return ""
			}
			val, rest = after[1:1+end], after[2+end:]
		} else {
			val, rest, _ = strings.Cut(after, ",")
		}
		if strings.EqualFold(strings.TrimSpace(key), "realm") {
			return val
		}
	}
	return ""
}

func basicToken(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
}
