package wasmimage

import (
	"context"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/content/memory"
)

// Progress follows the transfer of an image's layers (the module, or for the compat layouts
// the tar+gzip holding it): it is called with the layer's descriptor and the bytes moved so
// far, done rising to desc.Size. A layer the registry already has is reported once, as done.
// Calls for one layer come from one goroutine, in order.
type Progress func(desc ocispec.Descriptor, done int64)

// WithProgress reports the layers' transfer to p, for Push and Pull.
func WithProgress(p Progress) Option { return func(o *options) { o.progress = p } }

// progressReader counts what is read through it.
type progressReader struct {
	rc       io.ReadCloser
	desc     ocispec.Descriptor
	progress Progress
	done     int64
}

func (r *progressReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	if n > 0 {
		r.done += int64(n)
		r.progress(r.desc, r.done)
	}
	return n, err
}

func (r *progressReader) Close() error { return r.rc.Close() }

// progressSource is the in-memory image a push copies from; the registry's upload reads the
// layers through progressReaders.
type progressSource struct {
	*memory.Store
	layers   map[digest.Digest]bool
	progress Progress
}

func (s progressSource) Fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	rc, err := s.Store.Fetch(ctx, desc)
	if err != nil || !s.layers[desc.Digest] {
		return rc, err
	}
	return &progressReader{rc: rc, desc: desc, progress: s.progress}, nil
}

// fetchLayer is content.FetchAll (size and digest verified), with progress when asked.
func fetchLayer(ctx context.Context, f content.Fetcher, desc ocispec.Descriptor, progress Progress) ([]byte, error) {
	if progress == nil {
		return content.FetchAll(ctx, f, desc)
	}
	rc, err := f.Fetch(ctx, desc)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return content.ReadAll(&progressReader{rc: rc, desc: desc, progress: progress}, desc)
}
