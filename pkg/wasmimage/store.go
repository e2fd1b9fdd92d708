package wasmimage

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/opencontainers/go-digest"
)

// Store is the local image store (~/.wasme/store by default): modules are kept once by their
// sha256 under blobs/sha256/, and each reference is a small JSON file under refs/ pointing at
// one. Every file is written to a temporary name and renamed into place, so concurrent wasme
// processes never see a half-written module or entry, and an interrupted write leaves none.
type Store struct {
	dir string
}

// StoreEntry is one reference in the local store.
type StoreEntry struct {
	// Ref is the normalised reference.
	Ref string `json:"ref"`
	// ModuleDigest is sha256 of the module.
	ModuleDigest digest.Digest `json:"moduleDigest"`
	// Size is the module's size in bytes.
	Size int64 `json:"size"`
	// Config is the runtime config.
	Config RuntimeConfig `json:"config"`
	// ManifestDigest is the registry manifest digest, when the entry came from a registry or
	// was pushed to one.
	ManifestDigest digest.Digest `json:"manifestDigest,omitempty"`
	// Updated is when the entry was last written.
	Updated time.Time `json:"updated"`
}

// DefaultStoreDir is ~/.wasme/store.
func DefaultStoreDir() (string, error) {
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("local store: %w", err)
	}
	return filepath.Join(home, ".wasme", "store"), nil
}

// OpenStore opens (creating it if needed) the store at dir, DefaultStoreDir if dir is "".
func OpenStore(dir string) (*Store, error) {
	if dir == "" {
		d, err := DefaultStoreDir()
		if err != nil {
			return nil, err
		}
		dir = d
	}
	for _, d := range []string{filepath.Join(dir, "blobs", "sha256"), filepath.Join(dir, "refs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("local store: %w", err)
		}
	}
	return &Store{dir: dir}, nil
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// ErrNotInStore is returned for references the local store does not hold.
var ErrNotInStore = errors.New("not in the local store")

func (s *Store) blobPath(d digest.Digest) string {
	return filepath.Join(s.dir, "blobs", d.Algorithm().String(), d.Encoded())
}

func (s *Store) refPath(ref string) string {
	sum := sha256.Sum256([]byte(ref))
	return filepath.Join(s.dir, "refs", hex.EncodeToString(sum[:])+".json")
}

// Put stores module under ref (replacing what ref pointed at) and returns the entry.
func (s *Store) Put(ref Reference, module []byte, cfg RuntimeConfig, manifestDigest digest.Digest) (*StoreEntry, error) {
	if err := CheckHeader(module); err != nil {
		return nil, err
	}
	d := digest.FromBytes(module)
	if _, err := os.Stat(s.blobPath(d)); err != nil {
		if err := writeAtomic(s.blobPath(d), module); err != nil {
			return nil, fmt.Errorf("local store: %w", err)
		}
	}
	e := &StoreEntry{Ref: ref.String(), ModuleDigest: d, Size: int64(len(module)), Config: cfg, ManifestDigest: manifestDigest, Updated: time.Now().UTC().Truncate(time.Second)}
	if err := s.putEntry(e); err != nil {
		return nil, err
	}
	return e, nil
}

func (s *Store) putEntry(e *StoreEntry) error {
	b, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return err
	}
	if err := writeAtomic(s.refPath(e.Ref), append(b, '\n')); err != nil {
		return fmt.Errorf("local store: %w", err)
	}
	return nil
}

// Entry returns the entry of ref.
func (s *Store) Entry(ref Reference) (*StoreEntry, error) {
	b, err := os.ReadFile(s.refPath(ref.String()))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w (wasme list shows what it holds)", ref.Familiar(), ErrNotInStore)
	}
	if err != nil {
		return nil, fmt.Errorf("local store: %w", err)
	}
	var e StoreEntry
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("local store: entry for %s is corrupt: %w", ref, err)
	}
	return &e, nil
}

// Get returns the entry of ref and its module, verified against its digest.
func (s *Store) Get(ref Reference) (*StoreEntry, []byte, error) {
	e, err := s.Entry(ref)
	if err != nil {
		return nil, nil, err
	}
	b, err := os.ReadFile(s.blobPath(e.ModuleDigest))
	if err != nil {
		return nil, nil, fmt.Errorf("local store: module of %s: %w", ref, err)
	}
	if digest.FromBytes(b) != e.ModuleDigest {
		return nil, nil, fmt.Errorf("local store: module of %s: %w: file changed on disk", ref, ErrDigestMismatch)
	}
	return e, b, nil
}

// SetManifestDigest records the registry manifest digest of ref after a push.
func (s *Store) SetManifestDigest(ref Reference, d digest.Digest) error {
	e, err := s.Entry(ref)
	if err != nil {
		return err
	}
	e.ManifestDigest = d
	return s.putEntry(e)
}

// Tag makes dst point at what src points at.
func (s *Store) Tag(src, dst Reference) (*StoreEntry, error) {
	e, err := s.Entry(src)
	if err != nil {
		return nil, err
	}
	n := *e
	n.Ref = dst.String()
	n.ManifestDigest = ""
	n.Updated = time.Now().UTC().Truncate(time.Second)
	if err := s.putEntry(&n); err != nil {
		return nil, err
	}
	return &n, nil
}

// Delete removes ref. Modules stay: another process may be storing a reference to the same
// module at this moment, and a module is cheap to keep next to the cost of losing it.
func (s *Store) Delete(ref Reference) error {
	if err := os.Remove(s.refPath(ref.String())); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s: %w", ref.Familiar(), ErrNotInStore)
		}
		return fmt.Errorf("local store: %w", err)
	}
	return nil
}

// List returns every entry, sorted by reference. Corrupt entries are skipped.
func (s *Store) List() ([]StoreEntry, error) {
	files, err := os.ReadDir(filepath.Join(s.dir, "refs"))
	if err != nil {
		return nil, fmt.Errorf("local store: %w", err)
	}
	var out []StoreEntry
	for _, f := range files {
		if filepath.Ext(f.Name()) != ".json" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.dir, "refs", f.Name()))
		if err != nil {
			continue
		}
		var e StoreEntry
		if json.Unmarshal(b, &e) == nil && e.Ref != "" {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Ref < out[j].Ref })
	return out, nil
}

// writeAtomic writes b to a temporary file next to path, syncs it and renames it into place.
func writeAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			_ = f.Close()      // the write already failed
			_ = os.Remove(tmp) // best effort; a leftover .tmp- file is never read
		}
	}()
	if _, err := f.Write(b); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	return nil
}
