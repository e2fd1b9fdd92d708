package wasmimage

import (
	"context"
	"fmt"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content/memory"
)

// PushResult says what Push wrote.
type PushResult struct {
	// Ref is the normalised reference pushed to.
	Ref Reference
	// ManifestDigest is the digest of the pushed manifest.
	ManifestDigest digest.Digest
	// ModuleDigest is sha256 of the module bytes.
	ModuleDigest digest.Digest
	// Layout is the layout written.
	Layout Layout
}

// Push writes module with its runtime config to ref (which needs a tag) in the layout chosen
// with WithLayout, wasme's by default. Blobs the registry already has are not uploaded again.
func Push(ctx context.Context, ref string, module []byte, cfg RuntimeConfig, opts ...Option) (*PushResult, error) {
	r, err := ParseReference(ref)
	if err != nil {
		return nil, err
	}
	o := newOptions(opts)
	p, err := Pack(module, cfg, o.layout)
	if err != nil {
		return nil, fmt.Errorf("push %s: %w", r, err)
	}
	return PushPacked(ctx, r, p, opts...)
}

// PushPacked pushes an image laid out by Pack.
func PushPacked(ctx context.Context, r Reference, p *Packed, opts ...Option) (*PushResult, error) {
	if r.Digest != "" {
		return nil, fmt.Errorf("push %s: a push target needs a tag, not a digest", r)
	}
	o := newOptions(opts)
	repo, err := o.repository(r)
	if err != nil {
		return nil, err
	}
	src := memory.New()
	for _, d := range p.Descs {
		if err := src.Push(ctx, d, bytesReader(p.Blobs[d.Digest])); err != nil {
			return nil, err
		}
	}
	if err := src.Push(ctx, p.ManifestDesc, bytesReader(p.Manifest)); err != nil {
		return nil, err
	}
	if err := src.Tag(ctx, p.ManifestDesc, r.Tag); err != nil {
		return nil, err
	}
	var from oras.ReadOnlyTarget = src
	var copyOpts oras.CopyOptions
	if o.progress != nil {
		// Descs are config first, then the layers.
		layers := map[digest.Digest]bool{}
		for _, d := range p.Descs[1:] {
			layers[d.Digest] = true
		}
		from = progressSource{Store: src, layers: layers, progress: o.progress}
		copyOpts.OnCopySkipped = func(_ context.Context, d ocispec.Descriptor) error {
			if layers[d.Digest] {
				o.progress(d, d.Size)
			}
			return nil
		}
	}
	desc, err := oras.Copy(ctx, from, r.Tag, repo, r.Tag, copyOpts)
	if err != nil {
		return nil, classify(r, "push", err)
	}
	return &PushResult{Ref: r, ManifestDigest: desc.Digest, ModuleDigest: p.ModuleDigest, Layout: p.Layout}, nil
}
