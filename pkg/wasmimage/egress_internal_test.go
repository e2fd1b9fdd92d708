package wasmimage

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
)

// TestEgressDialChecksResolvedAddresses: a public-looking name that resolves to loopback
// (what a DNS rebinding attack returns at dial time) is refused, and no connection reaches
// the loopback listener; the addresses dialed are the ones checked, from one lookup.
func TestEgressDialChecksResolvedAddresses(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	var lookups atomic.Int32
	var asked []string
	p := DefaultEgressPolicy()
	p.lookup = func(_ context.Context, _, host string) ([]netip.Addr, error) {
		asked = append(asked, host)
		// First answer public, then loopback: only the answer of this very dial counts.
		if lookups.Add(1) == 1 {
			return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
		}
		return []netip.Addr{netip.MustParseAddr("93.184.216.34")}, nil
	}
	_, err = p.DialContext(context.Background(), "tcp", "rebind.example.com:"+port)
	if !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("err %v, want ErrNotAllowed", err)
	}
	if lookups.Load() != 1 {
		t.Errorf("%d lookups, want 1", lookups.Load())
	}
	if len(asked) != 1 || asked[0] != "rebind.example.com." {
		t.Errorf("resolver asked %q, want the absolute name (no search domains)", asked)
	}
	if _, err := p.DialContext(context.Background(), "tcp", "localhost:"+port); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("localhost: err %v, want ErrNotAllowed", err)
	}
	// An exact pattern lets the admin's own name reach an internal address.
	p2, err := NewEgressPolicy([]string{"registry.corp:" + port}, nil)
	if err != nil {
		t.Fatal(err)
	}
	p2.lookup = func(_ context.Context, _, host string) ([]netip.Addr, error) {
		if host != "registry.corp" {
			t.Errorf("exact pattern resolved %q, want the name as given", host)
		}
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
	}
	c, err := p2.DialContext(context.Background(), "tcp", "registry.corp:"+port)
	if err != nil {
		t.Fatalf("exact pattern: %v", err)
	}
	c.Close()
	if n := accepted.Load(); n > 1 {
		t.Errorf("listener accepted %d connections, want 1 (the allowed one)", n)
	}
}

func TestChallengeRealm(t *testing.T) {
	for ch, want := range map[string]string{
		`Bearer realm="https://auth.example.com/token",service="registry.example.com"`: "https://auth.example.com/token",
		`Bearer service="s", realm="https://a/t"`:                                      "https://a/t",
		`bearer realm=https://a/t,service=s`:                                           "https://a/t",
		`Basic realm="x"`:                                                              "",
		`Bearer service="s"`:                                                           "",
		`Bearer realm="unterminated`:                                                   "",
		``:                                                                             "",
	} {
		if got := challengeRealm(ch); got != want {
			t.Errorf("challengeRealm(%q) = %q, want %q", ch, got, want)
		}
	}
}
