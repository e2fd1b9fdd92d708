package moduleserver

import (
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
)

// Store holds verified modules in memory by the hex of their sha256, up to a byte budget; the
// least recently used modules make room for new ones.
type Store struct {
	mu       sync.Mutex
	maxBytes int64
	bytes    int64
	lru      *list.List // front = most recently used; values are *entry
	entries  map[string]*list.Element
	onChange func(entries int, bytes int64)
}

type entry struct {
	hex  string
	data []byte
}

// NewStore makes a store that holds at most maxBytes of modules.
func NewStore(maxBytes int64) *Store {
	return &Store{maxBytes: maxBytes, lru: list.New(), entries: map[string]*list.Element{}}
}

// Put stores data under hexDigest after checking that data hashes to it.
func (s *Store) Put(hexDigest string, data []byte) error {
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); got != hexDigest {
		return fmt.Errorf("module bytes have digest sha256:%s, not sha256:%s", got, hexDigest)
	}
	size := int64(len(data))
	if size > s.maxBytes {
		return fmt.Errorf("module sha256:%s is %d bytes, more than the store's %d", hexDigest, size, s.maxBytes)
	}
	// The caller may reuse its slice; the store's copy must never change under a reader.
	data = append([]byte(nil), data...)

	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.entries[hexDigest]; ok {
		s.lru.MoveToFront(el)
		return nil
	}
	for s.bytes+size > s.maxBytes {
		oldest := s.lru.Back()
		e := oldest.Value.(*entry)
		s.lru.Remove(oldest)
		delete(s.entries, e.hex)
		s.bytes -= int64(len(e.data))
	}
	s.entries[hexDigest] = s.lru.PushFront(&entry{hex: hexDigest, data: data})
	s.bytes += size
	s.changed()
	return nil
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
