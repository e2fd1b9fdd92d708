package wasmimage_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"wasme.io/wasme/internal/testing/registry"
	"wasme.io/wasme/pkg/wasmimage"
)

func addrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, v := range s {
		out[i] = netip.MustParseAddr(v)
	}
	return out
}

// TestEgressPolicyAllows is the policy's decision table: which host:port may be dialed when
// its name resolved to which addresses.
func TestEgressPolicyAllows(t *testing.T) {
	cases := []struct {
		name     string
		patterns []string
		cidrs    []string
		host     string
		port     string
		addrs    []netip.Addr
		ok       bool
	}{
		{"default: public name", nil, nil, "registry.example.com", "443", addrs("93.184.216.34"), true},
		{"default: public IPv6", nil, nil, "registry.example.com", "443", addrs("2606:2800:220:1::1"), true},
		{"default: loopback literal", nil, nil, "127.0.0.1", "5000", addrs("127.0.0.1"), false},
		{"default: other loopback", nil, nil, "127.9.9.9", "80", addrs("127.9.9.9"), false},
		{"default: name resolving to loopback", nil, nil, "localhost", "5000", addrs("127.0.0.1"), false},
		{"default: IPv6 loopback", nil, nil, "::1", "5000", addrs("::1"), false},
		{"default: IPv4-mapped loopback", nil, nil, "::ffff:127.0.0.1", "5000", addrs("::ffff:127.0.0.1"), false},
		{"default: NAT64 of private", nil, nil, "64:ff9b::a00:1", "443", addrs("64:ff9b::a00:1"), false},
		{"default: 6to4 of private", nil, nil, "2002:c0a8:101::1", "443", addrs("2002:c0a8:101::1"), false},
		{"default: RFC 1918 10/8", nil, nil, "r.example.com", "443", addrs("10.1.2.3"), false},
		{"default: RFC 1918 172.16/12", nil, nil, "r.example.com", "443", addrs("172.31.0.1"), false},
		{"default: 172.32 is public", nil, nil, "r.example.com", "443", addrs("172.32.0.1"), true},
		{"default: RFC 1918 192.168/16", nil, nil, "r.example.com", "443", addrs("192.168.1.1"), false},
		{"default: CGNAT", nil, nil, "r.example.com", "443", addrs("100.64.0.1"), false},
		{"default: ULA", nil, nil, "r.example.com", "443", addrs("fd12:3456::1"), false},
		{"default: metadata", nil, nil, "169.254.169.254", "80", addrs("169.254.169.254"), false},
		{"default: AWS IPv6 metadata", nil, nil, "fd00:ec2::254", "80", addrs("fd00:ec2::254"), false},
		{"default: Alibaba metadata", nil, nil, "100.100.100.200", "80", addrs("100.100.100.200"), false},
		{"default: unspecified", nil, nil, "0.0.0.0", "80", addrs("0.0.0.0"), false},
		{"default: one internal address of two", nil, nil, "r.example.com", "443", addrs("93.184.216.34", "10.0.0.1"), false},
		{"default: cluster CIDR", nil, []string{"203.0.113.0/24"}, "r.example.com", "443", addrs("203.0.113.9"), false},
		{"default: outside cluster CIDR", nil, []string{"203.0.113.0/24"}, "r.example.com", "443", addrs("203.0.114.9"), true},
		{"exact host: internal allowed", []string{"registry.corp"}, nil, "registry.corp", "5000", addrs("10.0.0.5"), true},
		{"exact host, trailing dot and case", []string{"Registry.Corp."}, nil, "registry.corp", "443", addrs("10.0.0.5"), true},
		{"exact host: other host refused", []string{"registry.corp"}, nil, "evil.example.com", "443", addrs("93.184.216.34"), false},
		{"exact host: metadata never", []string{"registry.corp"}, nil, "registry.corp", "80", addrs("169.254.169.254"), false},
		{"exact host: link-local never", []string{"fe80::1"}, nil, "fe80::1", "80", addrs("fe80::1"), false},
		{"exact IP, any port", []string{"127.0.0.1:*"}, nil, "127.0.0.1", "6000", addrs("127.0.0.1"), true},
		{"exact IP and port", []string{"127.0.0.1:5000"}, nil, "127.0.0.1", "5000", addrs("127.0.0.1"), true},
		{"exact IP, wrong port", []string{"127.0.0.1:5000"}, nil, "127.0.0.1", "5001", addrs("127.0.0.1"), false},
		{"bracketed IPv6 and port", []string{"[::1]:5000"}, nil, "::1", "5000", addrs("::1"), true},
		{"wildcard: public only", []string{"*.example.com"}, nil, "a.b.example.com", "443", addrs("93.184.216.34"), true},
		{"wildcard: internal refused", []string{"*.example.com"}, nil, "a.example.com", "443", addrs("10.0.0.1"), false},
		{"wildcard: apex not matched", []string{"*.example.com"}, nil, "example.com", "443", addrs("93.184.216.34"), false},
		{"wildcard with port", []string{"*.example.com:5000"}, nil, "a.example.com", "443", addrs("93.184.216.34"), false},
		{"star plus exact internal", []string{"*", "harbor.corp:443"}, nil, "harbor.corp", "443", addrs("10.9.0.1"), true},
		{"star plus exact: others public only", []string{"*", "harbor.corp:443"}, nil, "other.corp", "443", addrs("10.9.0.1"), false},
		{"CIDR: literal in range", []string{"10.20.0.0/16"}, nil, "10.20.3.4", "5000", addrs("10.20.3.4"), true},
		{"CIDR: name not matched", []string{"10.20.0.0/16"}, nil, "r.corp", "5000", addrs("10.20.3.4"), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := wasmimage.NewEgressPolicy(c.patterns, c.cidrs)
			if err != nil {
				t.Fatal(err)
			}
			err = p.Allows(c.host, c.port, c.addrs)
			if c.ok && err != nil {
				t.Fatalf("refused: %v (%s)", err, detail(err))
			}
			if !c.ok {
				if !errors.Is(err, wasmimage.ErrNotAllowed) {
					t.Fatalf("allowed, want refused (err %v)", err)
				}
				for _, a := range c.addrs {
					if strings.Contains(err.Error(), a.String()) && a.String() != c.host {
						t.Errorf("message %q names the resolved address %s", err, a)
					}
				}
			}
		})
	}
}

func detail(err error) string {
	var na *wasmimage.NotAllowedError
	if errors.As(err, &na) {
		return na.Detail
	}
	return ""
}

func TestEgressPolicyBadPatterns(t *testing.T) {
	for _, p := range []string{"", "host:0", "host:99999", "host:x", "[::1", "[::1]x", "10.0.0.0/33", "a[b"} {
		if _, err := wasmimage.NewEgressPolicy([]string{p}, nil); err == nil {
			t.Errorf("pattern %q accepted", p)
		}
	}
	if _, err := wasmimage.NewEgressPolicy(nil, []string{"10.0.0.0"}); err == nil {
		t.Error("CIDR without length accepted")
	}
}

// TestEgressPolicyPull pulls from a real registry on loopback: the default policy refuses
// it by IP and by a name that resolves to it (the check is on the dialed address), before a
// single byte reaches it; an exact pattern allows it.
func TestEgressPolicyPull(t *testing.T) {
	reg := registry.StartT(t, registry.Options{})
	ctx := context.Background()
	ref := reg.Host + "/egress/tiny:v1"
	if _, err := wasmimage.Push(ctx, ref, tiny, wasmimage.RuntimeConfig{}, plain); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(reg.Host)
	for _, r := range []string{ref, "localhost:" + port + "/egress/tiny:v1"} {
		_, err := wasmimage.Pull(ctx, r, plain, wasmimage.WithEgressPolicy(wasmimage.DefaultEgressPolicy()))
		if !errors.Is(err, wasmimage.ErrNotAllowed) {
			t.Errorf("default policy, %s: err %v, want ErrNotAllowed", r, err)
		}
	}
	p, err := wasmimage.NewEgressPolicy([]string{"127.0.0.1:" + port}, nil)
	if err != nil {
		t.Fatal(err)
	}
	img, err := wasmimage.Pull(ctx, ref, plain, wasmimage.WithEgressPolicy(p))
	if err != nil {
		t.Fatalf("allowed by an exact pattern: %v", err)
	}
	if string(img.Module) != string(tiny) {
		t.Error("pulled module differs")
	}
	// The policy also holds when the registry answers with a redirect to another host.
	var hits atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { hits.Add(1) }))
	defer other.Close()
	proxy := registry.NewProxy(t, reg)
	proxy.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/blobs/") {
			http.Redirect(w, r, other.URL+r.URL.Path, http.StatusTemporaryRedirect)
			return true
		}
		return false
	})
	p, err = wasmimage.NewEgressPolicy([]string{proxy.Host}, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = wasmimage.Pull(ctx, proxy.Host+"/egress/tiny:v1", plain, wasmimage.WithEgressPolicy(p))
	if !errors.Is(err, wasmimage.ErrNotAllowed) {
		t.Errorf("redirect to %s: err %v, want ErrNotAllowed", other.URL, err)
	}
	if hits.Load() != 0 {
		t.Errorf("the redirect target got %d requests", hits.Load())
	}
}
