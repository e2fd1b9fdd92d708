package nodecache

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	wasmev1 "wasme.io/wasme/api/v1"
)

// tempPrefix marks files being written. They never carry a final name, so Envoy, which loads
// <dir>/<hex>, cannot see a partial module; a restart deletes any left behind.
const tempPrefix = ".wasme-tmp-"

// ErrDigestMismatch is returned when fetched bytes do not hash to the digest asked for.
var ErrDigestMismatch = errors.New("module bytes do not match the digest")

// ErrTooLarge is returned when a module is larger than the configured limit.
var ErrTooLarge = errors.New("module larger than the limit")

// tempFile is what Store writes a module into; an *os.File, or a fault-injecting wrapper in tests.
type tempFile interface {
	io.Writer
	Name() string
	Chmod(fs.FileMode) error
	Sync() error
	Close() error
}

// Store is the directory of verified modules, each in <dir>/<sha256 hex of its bytes>.
type Store struct {
	dir string
	// createTemp opens a new temp file; tests replace it to inject write faults.
	createTemp func(dir, pattern string) (tempFile, error)

	mu    sync.Mutex
	files map[string]*storedFile
}

type storedFile struct {
	size     int64
	lastUsed time.Time
}

// scanResult says what OpenStore found and cleaned up.
type scanResult struct {
	modules        int
	tempRemoved    int
	corruptRemoved []string
	ignored        []string
}

// OpenStore opens dir (creating it if needed) and rebuilds the index from it: leftover temp
// files from an interrupted write are deleted, and every module is hashed again so that a file
// corrupted on disk is removed (and fetched again) instead of served.
func OpenStore(dir string) (*Store, scanResult, error) {
	var res scanResult
	if dir == "" {
		return nil, res, errors.New("the cache directory must not be empty")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, res, fmt.Errorf("creating the cache directory: %w", err)
	}
	s := &Store{dir: dir, files: map[string]*storedFile{}, createTemp: func(dir, pattern string) (tempFile, error) {
		return os.CreateTemp(dir, pattern)
	}}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, res, fmt.Errorf("reading the cache directory: %w", err)
	}
	now := time.Now()
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(dir, name)
		switch {
		case strings.HasPrefix(name, tempPrefix):
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, res, fmt.Errorf("removing the leftover temp file %s: %w", name, err)
			}
			res.tempRemoved++
		case wasmev1.IsSHA256Hex(name) && e.Type().IsRegular():
			size, ok, err := verifyFile(path, name)
			if err != nil {
				return nil, res, err
			}
			if !ok {
				if err := os.Remove(path); err != nil {
					return nil, res, fmt.Errorf("removing the corrupt module %s: %w", name, err)
				}
				res.corruptRemoved = append(res.corruptRemoved, name)
				continue
			}
			s.files[name] = &storedFile{size: size, lastUsed: now}
			res.modules++
		default:
			// Not ours to delete: the directory is a hostPath an administrator may use too.
			res.ignored = append(res.ignored, name)
		}
	}
	return s, res, syncDir(dir)
}

// verifyFile hashes path and reports whether it matches hexDigest.
func verifyFile(path, hexDigest string) (int64, bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false, fmt.Errorf("verifying %s: %w", hexDigest, err)
	}
	defer f.Close() //nolint:errcheck // opened for reading
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return 0, false, fmt.Errorf("verifying %s: %w", hexDigest, err)
	}
	return n, hex.EncodeToString(h.Sum(nil)) == hexDigest, nil
}

// Write stores the module read from r under hexDigest: it streams r into a temp file while
// hashing, refuses it if it is larger than limit or does not hash to hexDigest, and only then
// fsyncs and renames it to its final name. On any error nothing is left behind.
func (s *Store) Write(hexDigest string, r io.Reader, limit int64) (size int64, err error) {
	f, err := s.createTemp(s.dir, tempPrefix+hexDigest+"-*")
	if err != nil {
		return 0, fmt.Errorf("creating a temp file: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(r, limit+1))
	if err != nil {
		return 0, fmt.Errorf("writing the module: %w", err)
	}
	if n > limit {
		return 0, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, limit)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != hexDigest {
		return 0, fmt.Errorf("%w: got sha256:%s, want sha256:%s", ErrDigestMismatch, got, hexDigest)
	}
	// Sidecars run as another user and read the file through the hostPath.
	if err := f.Chmod(0o644); err != nil {
		return 0, fmt.Errorf("making the module readable: %w", err)
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("syncing the module: %w", err)
	}
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("closing the module: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, hexDigest)); err != nil {
		return 0, fmt.Errorf("moving the module into place: %w", err)
	}
	// The rename is durable only once the directory is synced; without it a crash could
	// leave a report of Ready for a file that is gone.
	if err := syncDir(s.dir); err != nil {
		return 0, err
	}
	s.mu.Lock()
	s.files[hexDigest] = &storedFile{size: n, lastUsed: time.Now()}
	s.mu.Unlock()
	return n, nil
}

// Open opens a held module for reading and counts it as used. The open file stays whole even
// if the module is removed or replaced meanwhile, since both are renames or unlinks.
func (s *Store) Open(hexDigest string) (*os.File, error) {
	s.mu.Lock()
	sf, ok := s.files[hexDigest]
	if ok {
		sf.lastUsed = time.Now()
	}
	s.mu.Unlock()
	if !ok {
		return nil, fs.ErrNotExist
	}
	return os.Open(filepath.Join(s.dir, hexDigest))
}

// Has returns the size of a held module.
func (s *Store) Has(hexDigest string) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sf, ok := s.files[hexDigest]
	if !ok {
		return 0, false
	}
	return sf.size, true
}

// Remove deletes a module. Readers that have it open keep reading the whole file.
func (s *Store) Remove(hexDigest string) error {
	s.mu.Lock()
	delete(s.files, hexDigest)
	s.mu.Unlock()
	if err := os.Remove(filepath.Join(s.dir, hexDigest)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing module %s: %w", hexDigest, err)
	}
	return nil
}

// held is a snapshot of one stored module.
type held struct {
	hex      string
	size     int64
	lastUsed time.Time
}

// List returns every held module.
func (s *Store) List() []held {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]held, 0, len(s.files))
	for h, sf := range s.files {
		out = append(out, held{hex: h, size: sf.size, lastUsed: sf.lastUsed})
	}
	return out
}

// Totals returns the number of modules and their size in bytes.
func (s *Store) Totals() (int, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var bytes int64
	for _, sf := range s.files {
		bytes += sf.size
	}
	return len(s.files), bytes
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing the cache directory: %w", err)
	}
	defer d.Close() //nolint:errcheck // the Sync below is what can fail
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing the cache directory: %w", err)
	}
	return nil
}

// Verify hashes a held module's file again. It returns false, with the error if one occurred,
// when the file is gone, unreadable, of another size than written, or does not hash to its
// name; true for a held module that is intact.
func (s *Store) Verify(hexDigest string) (bool, error) {
	size, ok := s.Has(hexDigest)
	if !ok {
		return true, nil // removed meanwhile: nothing to verify
	}
	n, match, err := verifyFile(filepath.Join(s.dir, hexDigest), hexDigest)
	if err != nil {
		return false, err
	}
	if n != size {
		return false, fmt.Errorf("its size changed from %d to %d bytes", size, n)
	}
	return match, nil
}
