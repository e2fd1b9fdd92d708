package wasmimage

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path"
	"strconv"
	"strings"
	"time"
)

// ErrNotAllowed: the egress policy refused the host, or the address its name resolved to.
var ErrNotAllowed = errors.New("not allowed by the registry policy")

// NotAllowedError is an egress policy refusal. Its message names only the host that was
// refused, never what the name resolved to: that would tell whoever chose the host about the
// network the operator sits in. Detail says why, for logs.
type NotAllowedError struct {
	// Host is the host[:port] that was refused, as the request named it.
	Host string
	// Detail is the reason, for the operator's log (it may name resolved addresses).
	Detail string
}

func (e *NotAllowedError) Error() string { return e.Host + " is " + ErrNotAllowed.Error() }

// Is makes errors.Is(err, ErrNotAllowed) hold.
func (e *NotAllowedError) Is(target error) bool { return target == ErrNotAllowed }

// EgressPolicy decides which hosts wasme may connect to: the registry of an image, the token
// realms its authentication challenges name, and every redirect. It is enforced when a
// connection is dialed, on the very addresses that are dialed: the name is resolved once,
// every address is checked, and only checked addresses are dialed, so a name that resolves
// to a public address when a URL is checked and to an internal one when it is dialed (DNS
// rebinding) gains nothing.
//
// A policy is a list of patterns; a host may be reached when one matches:
//
//   - "*" or a glob over the host name ("*.example.com", path.Match syntax), optionally with
//     ":port" (a number or "*"; no port means any port). Hosts matched only by patterns with a
//     wildcard in the host part must resolve to public addresses only.
//   - an exact host name or IP ("registry.example.com", "127.0.0.1:5000", "[fd00::1]:5000"):
//     the operator's admin vouches for it, so it may also be internal (loopback, private
//     ranges, cluster CIDRs). Names are resolved with the system resolver as they are.
//   - a CIDR ("10.20.0.0/16"): IP literal hosts in it, any port, internal allowed.
//
// Whatever the patterns, addresses that are never a registry are never dialed: unspecified,
// link-local (169.254.0.0/16 holds most clouds' metadata service), multicast, reserved, and
// the cloud metadata addresses outside link-local (fd00:ec2::254, 100.100.100.200, ...).
//
// Names matched by a wildcard are resolved as absolute names (no resolv.conf search
// domains): in a pod, "db.team" would otherwise be tried as db.team.<ns>.svc.cluster.local
// first, telling a tenant which cluster Services exist. HTTP(S)_PROXY is not used when a
// policy is set: the policy must see the registry's own address.
type EgressPolicy struct {
	patterns []hostPattern
	internal []netip.Prefix
	dialer   net.Dialer
	lookup   func(ctx context.Context, network, host string) ([]netip.Addr, error)
}

type hostPattern struct {
	raw    string
	host   string // lower-case glob or exact host
	port   string // "" or "*": any port
	exact  bool   // no wildcard in host: internal addresses allowed
	prefix netip.Prefix
}

// NewEgressPolicy builds a policy from patterns (see EgressPolicy) and extra address ranges
// counted as internal, such as the cluster's pod and Service CIDRs (RFC 1918, CGNAT and ULA
// ranges already are). No patterns means "*": any host with public addresses only.
func NewEgressPolicy(patterns, internalCIDRs []string) (*EgressPolicy, error) {
	p := &EgressPolicy{
		dialer: net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second},
		lookup: net.DefaultResolver.LookupNetIP,
	}
	if len(patterns) == 0 {
		patterns = []string{"*"}
	}
	for _, raw := range patterns {
		hp, err := parseHostPattern(raw)
		if err != nil {
			return nil, err
		}
		p.patterns = append(p.patterns, hp)
	}
	for _, c := range internalCIDRs {
		pfx, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			return nil, fmt.Errorf("internal CIDR %q: %w", c, err)
		}
		p.internal = append(p.internal, pfx.Masked())
	}
	return p, nil
}

// DefaultEgressPolicy allows any host whose addresses are all public.
func DefaultEgressPolicy() *EgressPolicy {
	p, _ := NewEgressPolicy(nil, nil)
	return p
}

func parseHostPattern(raw string) (hostPattern, error) {
	s := strings.ToLower(strings.TrimSpace(raw))
	if s == "" {
		return hostPattern{}, fmt.Errorf("registry pattern %q is empty", raw)
	}
	if strings.Contains(s, "/") {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			return hostPattern{}, fmt.Errorf("registry pattern %q: not a host glob or CIDR: %w", raw, err)
		}
		return hostPattern{raw: raw, prefix: pfx.Masked(), exact: true}, nil
	}
	host, port := s, ""
	switch {
	case strings.HasPrefix(s, "["):
		end := strings.Index(s, "]")
		if end < 0 {
			return hostPattern{}, fmt.Errorf("registry pattern %q: missing ]", raw)
		}
		host, port = s[1:end], strings.TrimPrefix(s[end+1:], ":")
		if s[end+1:] != "" && !strings.HasPrefix(s[end+1:], ":") {
			return hostPattern{}, fmt.Errorf("registry pattern %q: junk after ]", raw)
		}
	case strings.Count(s, ":") == 1:
		host, port, _ = strings.Cut(s, ":")
	}
	if port != "" && port != "*" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return hostPattern{}, fmt.Errorf("registry pattern %q: port %q is not a number from 1 to 65535 or *", raw, port)
		}
	}
	host = strings.TrimSuffix(host, ".")
	if host == "" {
		return hostPattern{}, fmt.Errorf("registry pattern %q has no host", raw)
	}
	if _, err := path.Match(host, ""); err != nil {
		return hostPattern{}, fmt.Errorf("registry pattern %q: %w", raw, err)
	}
	return hostPattern{raw: raw, host: host, port: port, exact: !strings.ContainsAny(host, `*?[\`)}, nil
}

func (hp hostPattern) match(host, port string) bool {
	if hp.prefix.IsValid() {
		a, err := netip.ParseAddr(host)
		return err == nil && hp.prefix.Contains(unwrapAddr(a))
	}
	if hp.port != "" && hp.port != "*" && hp.port != port {
		return false
	}
	if hp.exact {
		if a, err := netip.ParseAddr(host); err == nil {
			b, err := netip.ParseAddr(hp.host)
			return err == nil && a.WithZone("") == b
		}
		return host == hp.host
	}
	ok, _ := path.Match(hp.host, host)
	return ok
}

// decide says whether host:port may be dialed at all, and whether its addresses may be
// internal.
func (p *EgressPolicy) decide(host, port string) (allowed, internalOK bool) {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	for _, hp := range p.patterns {
		if hp.match(host, port) {
			allowed = true
			if hp.exact {
				return true, true
			}
		}
	}
	return allowed, false
}

// Ranges of addresses. never: not a registry whatever the policy says; internal: dialed only
// for hosts an exact pattern names.
var (
	neverPrefixes = mustPrefixes(
		"0.0.0.0/8", "::/128", // unspecified: 0.0.0.0 reaches the local host on Linux
		"169.254.0.0/16", "fe80::/10", // link-local: 169.254.169.254 and 169.254.170.2 are metadata services
		"224.0.0.0/4", "ff00::/8", // multicast
		"240.0.0.0/4",                           // reserved, and the broadcast address
		"fd00:ec2::254/128", "fd00:ec2::23/128", // AWS metadata and DNS over IPv6
		"fd20:ce::254/128",   // GCP metadata over IPv6
		"100.100.100.200/32", // Alibaba Cloud metadata
		"168.63.129.16/32",   // Azure WireServer
		"192.0.0.192/32",     // Oracle Cloud metadata (legacy)
	)
	internalPrefixes = mustPrefixes(
		"127.0.0.0/8", "::1/128", // loopback
		"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", // RFC 1918
		"100.64.0.0/10", // carrier-grade NAT (also some clusters' pod ranges)
		"fc00::/7",      // unique local
		"192.0.0.0/24",  // IETF protocol assignments
		"198.18.0.0/15", // benchmarking
	)
	nat64Prefix  = netip.MustParsePrefix("64:ff9b::/96")
	sixTo4Prefix = netip.MustParsePrefix("2002::/16")
)

func mustPrefixes(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, v := range s {
		out[i] = netip.MustParsePrefix(v)
	}
	return out
}

// unwrapAddr returns the IPv4 address inside an IPv4-mapped, NAT64 or 6to4 address, so
// ::ffff:127.0.0.1 is judged as 127.0.0.1.
func unwrapAddr(a netip.Addr) netip.Addr {
	a = a.Unmap().WithZone("")
	if a.Is6() {
		b := a.As16()
		switch {
		case nat64Prefix.Contains(a):
			return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
		case sixTo4Prefix.Contains(a):
			return netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]})
		}
	}
	return a
}

// AddressClass is how the policy sees an address.
type AddressClass int

// Address classes, from most to least permissive.
const (
	// AddressPublic may be dialed for any allowed host.
	AddressPublic AddressClass = iota
	// AddressInternal (loopback, private, CGNAT, ULA, cluster CIDRs) only for exact patterns.
	AddressInternal
	// AddressNever (unspecified, link-local, metadata, multicast, reserved) is never dialed.
	AddressNever
)

// Classify tells how the policy treats an address.
func (p *EgressPolicy) Classify(a netip.Addr) AddressClass {
	u := unwrapAddr(a)
	for _, pfx := range neverPrefixes {
		if pfx.Contains(u) || pfx.Contains(a.WithZone("")) {
			return AddressNever
		}
	}
	for _, list := range [][]netip.Prefix{internalPrefixes, p.internal} {
		for _, pfx := range list {
			if pfx.Contains(u) || pfx.Contains(a.WithZone("")) {
				return AddressInternal
			}
		}
	}
	return AddressPublic
}

// Allows reports whether host:port may be dialed when it resolves to addrs (nil err) or why
// not; the check DialContext makes, for tests and tools.
func (p *EgressPolicy) Allows(host, port string, addrs []netip.Addr) error {
	hostport := net.JoinHostPort(host, port)
	allowed, internalOK := p.decide(host, port)
	if !allowed {
		return &NotAllowedError{Host: hostport, Detail: "it matches no allowed registry pattern"}
	}
	for _, a := range addrs {
		switch p.Classify(a) {
		case AddressNever:
			return &NotAllowedError{Host: hostport, Detail: fmt.Sprintf("address %s is link-local, metadata, unspecified, multicast or reserved", a)}
		case AddressInternal:
			if !internalOK {
				return &NotAllowedError{Host: hostport, Detail: fmt.Sprintf("address %s is internal (loopback, private or cluster range) and no exact pattern names the host", a)}
			}
		}
	}
	return nil
}

// DialContext dials addr ("host:port") if the policy allows it; use it as an
// http.Transport's DialContext.
func (p *EgressPolicy) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, &NotAllowedError{Host: addr, Detail: err.Error()}
	}
	allowed, internalOK := p.decide(host, port)
	if !allowed {
		return nil, &NotAllowedError{Host: addr, Detail: "it matches no allowed registry pattern"}
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else {
		name := host
		if !internalOK {
			// RFC 6761: localhost names are the local host whatever DNS says.
			if l := strings.TrimSuffix(strings.ToLower(host), "."); l == "localhost" || strings.HasSuffix(l, ".localhost") {
				return nil, &NotAllowedError{Host: addr, Detail: "localhost is the operator itself"}
			}
			name = strings.TrimSuffix(host, ".") + "."
		}
		ipNet := "ip"
		switch network {
		case "tcp4":
			ipNet = "ip4"
		case "tcp6":
			ipNet = "ip6"
		}
		if addrs, err = p.lookup(ctx, ipNet, name); err != nil {
			return nil, &net.OpError{Op: "dial", Net: network, Err: err}
		}
	}
	if err := p.Allows(host, port, addrs); err != nil {
		return nil, err
	}
	var lastErr error
	for _, a := range addrs {
		c, err := p.dialer.DialContext(ctx, network, net.JoinHostPort(a.WithZone("").String(), port))
		if err == nil {
			return c, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	if lastErr == nil {
		lastErr = &net.OpError{Op: "dial", Net: network, Err: errors.New("no addresses")}
	}
	return nil, lastErr
}
