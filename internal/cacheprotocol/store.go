package cacheprotocol

import (
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
)

// Store holds verified modules in memory by the hex of their sha256, up to a byte budget. It
// is the operator's one copy of module bytes: the reconciler puts what it pulls and validates
// from it, the module server serves from it. To make room, modules no FilterDeployment names
// go first (least recently used first), then the least recently used of the others; either
// can be pulled again.
type Store struct {
	mu       sync.Mutex
	maxBytes int64
	bytes    int64
	lru      *list.List // front = most recently used; values are *entry
	entries  map[string]*list.Element
	onChange func(entries int, bytes int64)
	// named returns the module digests (hex) some FilterDeployment's status names; nil means
	// none is known to be named.
	named func() map[string]bool
}

type entry struct {
	hex  string
	data []byte
}

// NewStore makes a store that holds at most maxBytes of modules.
func NewStore(maxBytes int64) *Store {
	return &Store{maxBytes: maxBytes, lru: list.New(), entries: map[string]*list.Element{}}
}

// MaxBytes is the store's budget.
func (s *Store) MaxBytes() int64 { return s.maxBytes }

// Put stores data under hexDigest after checking that data hashes to it. A module already
// held costs neither a hash nor a copy.
func (s *Store) Put(hexDigest string, data []byte) error {
	if s.touch(hexDigest) {
		return nil
	}
	size := int64(len(data))
	if size > s.maxBytes {
		return fmt.Errorf("module sha256:%s is %d bytes, more than the module store's %d", hexDigest, size, s.maxBytes)
	}
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); got != hexDigest {
		return fmt.Errorf("module bytes have digest sha256:%s, not sha256:%s", got, hexDigest)
	}
	// The caller may reuse its slice; the store's copy must never change under a reader.
	data = append([]byte(nil), data...)

	var named map[string]bool
	if s.named != nil && s.wouldOverflow(size) {
		named = s.named() // outside the lock: it lists FilterDeployments
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.entries[hexDigest]; ok {
		s.lru.MoveToFront(el)
		return nil
	}
	s.evict(size, func(e *entry) bool { return !named[e.hex] })
	s.evict(size, func(*entry) bool { return true })
	s.entries[hexDigest] = s.lru.PushFront(&entry{hex: hexDigest, data: data})
	s.bytes += size
	s.changed()
	return nil
}

// evict drops entries that may go, least recently used first, until size more bytes fit.
func (s *Store) evict(size int64, mayGo func(*entry) bool) {
	for el := s.lru.Back(); el != nil && s.bytes+size > s.maxBytes; {
		prev := el.Prev()
		if e := el.Value.(*entry); mayGo(e) {
			s.lru.Remove(el)
			delete(s.entries, e.hex)
			s.bytes -= int64(len(e.data))
		}
		el = prev
	}
}

func (s *Store) touch(hexDigest string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	el, ok := s.entries[hexDigest]
	if ok {
		s.lru.MoveToFront(el)
	}
	return ok
}

func (s *Store) wouldOverflow(size int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bytes+size > s.maxBytes
}

// Get returns the module stored under hexDigest. The slice must not be modified.
func (s *Store) Get(hexDigest string) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	el, ok := s.entries[hexDigest]
	if !ok {
		return nil, false
	}
	s.lru.MoveToFront(el)
	return el.Value.(*entry).data, true
}

// Has reports whether hexDigest is stored, without counting as a use.
func (s *Store) Has(hexDigest string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.entries[hexDigest]
	return ok
}

// Len returns the number of modules and their total size.
func (s *Store) Len() (int, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries), s.bytes
}

func (s *Store) changed() {
	if s.onChange != nil {
		s.onChange(len(s.entries), s.bytes)
	}
}
