package cacheprotocol

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"
)

func hexOf(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// The store makes room by dropping the modules no FilterDeployment names first, then the least
// recently used of the others; a module it holds costs no hash on a second Put.
func TestStoreEviction(t *testing.T) {
	mod := func(c byte) []byte { b := make([]byte, 100); b[0] = c; return b }
	a, b, c, d := mod('a'), mod('b'), mod('c'), mod('d')
	s := NewStore(300)
	named := map[string]bool{hexOf(a): true, hexOf(c): true}
	s.named = func() map[string]bool { return named }
	for _, m := range [][]byte{a, b, c} {
		if err := s.Put(hexOf(m), m); err != nil {
			t.Fatal(err)
		}
	}
	// a is the least recently used, but named: b goes.
	if err := s.Put(hexOf(d), d); err != nil {
		t.Fatal(err)
	}
	for m, want := range map[byte]bool{'a': true, 'b': false, 'c': true, 'd': true} {
		if got := s.Has(hexOf(mod(m))); got != want {
			t.Errorf("holds %c: %v, want %v", m, got, want)
		}
	}
	// All named now: the least recently used goes (a; c and d were used since).
	named[hexOf(d)] = true
	s.Get(hexOf(c))
	if err := s.Put(hexOf(b), b); err != nil {
		t.Fatal(err)
	}
	if s.Has(hexOf(a)) || !s.Has(hexOf(c)) || !s.Has(hexOf(d)) || !s.Has(hexOf(b)) {
		t.Errorf("after a fourth module: a %v b %v c %v d %v", s.Has(hexOf(a)), s.Has(hexOf(b)), s.Has(hexOf(c)), s.Has(hexOf(d)))
	}
	if n, size := s.Len(); n != 3 || size != 300 {
		t.Errorf("Len = %d, %d", n, size)
	}
	// Held already: no hash, so even wrong bytes are not looked at (and not stored).
	if err := s.Put(hexOf(b), []byte("other")); err != nil {
		t.Errorf("Put of a held digest: %v", err)
	}
	if got, _ := s.Get(hexOf(b)); got[0] != 'b' {
		t.Error("a held module was replaced")
	}
	// Not held: verified.
	if err := s.Put(hexOf(a), []byte("other")); err == nil {
		t.Error("bytes that do not hash to the digest were stored")
	}
	if err := s.Put(hexOf(make([]byte, 301)), make([]byte, 301)); err == nil {
		t.Error("a module larger than the store was stored")
	}
}
