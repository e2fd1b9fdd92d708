package wasmimage

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/errcode"
)

// Image is a pulled Wasm filter image.
type Image struct {
	// Ref is the normalised reference it was pulled by.
	Ref Reference
	// ManifestDigest is the digest the reference resolved to: the manifest's, or the index's
	// when the reference names an index. Pin this one.
	ManifestDigest digest.Digest
	// ModuleDigest is sha256 of Module, the name the node cache and Envoy use.
	ModuleDigest digest.Digest
	// Module is the raw .wasm bytes.
	Module []byte
	// Config is the runtime config: from the image when it has one, else what the manifest
	// annotations say.
	Config RuntimeConfig
	// Layout is the layout the image was found in.
	Layout Layout
	// Annotations are the (platform) manifest's annotations.
	Annotations map[string]string
}

// Resolve returns the manifest digest ref points at, without downloading anything else. A
// reference pinned to a digest is checked to exist.
func Resolve(ctx context.Context, ref string, opts ...Option) (digest.Digest, error) {
	_, desc, err := ResolveDescriptor(ctx, ref, opts...)
	if err != nil {
		return "", err
	}
	return desc.Digest, nil
}

// ResolveDescriptor is Resolve returning the manifest's descriptor (media type, digest, size)
// and the repository client it asked, configured by opts (auth, TLS, egress policy, retries),
// for callers that read or write what is attached to the image, such as its signatures.
func ResolveDescriptor(ctx context.Context, ref string, opts ...Option) (*remote.Repository, ocispec.Descriptor, error) {
	r, err := ParseReference(ref)
	if err != nil {
		return nil, ocispec.Descriptor{}, err
	}
	repo, err := newOptions(opts).repository(r)
	if err != nil {
		return nil, ocispec.Descriptor{}, err
	}
	desc, err := repo.Resolve(ctx, r.target())
	if err != nil {
		return nil, ocispec.Descriptor{}, classify(r, "resolve", explainNotFound(ctx, repo, r, err))
	}
	if r.Digest != "" && desc.Digest != r.Digest {
		return nil, ocispec.Descriptor{}, fmt.Errorf("resolve %s: %w: registry answered %s", r, ErrDigestMismatch, desc.Digest)
	}
	return repo, desc, nil
}

// Pull downloads the image ref names, in any layout this package reads, and returns the
// module with both digests. Every blob is verified against its digest while it is read, the
// module size limit holds before and during the download, and the module must start with the
// Wasm header. Use ValidateModule for the full compile check.
func Pull(ctx context.Context, ref string, opts ...Option) (*Image, error) {
	r, err := ParseReference(ref)
	if err != nil {
		return nil, err
	}
	o := newOptions(opts)
	repo, err := o.repository(r)
	if err != nil {
		return nil, err
	}
	img, err := pull(ctx, repo, r, o)
	if err != nil {
		return nil, classify(r, "pull", explainNotFound(ctx, repo, r, err))
	}
	return img, nil
}

func pull(ctx context.Context, repo *remote.Repository, r Reference, o *options) (*Image, error) {
	desc, rc, err := repo.FetchReference(ctx, r.target())
	if err != nil {
		return nil, err
	}
	if r.Digest != "" && desc.Digest != r.Digest {
		rc.Close()
		return nil, fmt.Errorf("%w: registry answered %s for %s", ErrDigestMismatch, desc.Digest, r.Digest)
	}
	b, err := content.ReadAll(rc, desc)
	rc.Close()
	if err != nil {
		return nil, err
	}
	img := &Image{Ref: r, ManifestDigest: desc.Digest}
	m, err := parseManifestJSON(b)
	if err != nil {
		return nil, err
	}
	if m.MediaType == "" {
		m.MediaType = desc.MediaType
	}
	if isIndexMediaType(m.MediaType) || (len(m.Manifests) > 0 && len(m.Layers) == 0) {
		child, err := chooseFromIndex(m)
		if err != nil {
			return nil, err
		}
		if child.Size > maxManifestSize {
			return nil, fmt.Errorf("%w: manifest %s is %d bytes", ErrTooLarge, child.Digest, child.Size)
		}
		if b, err = content.FetchAll(ctx, repo, child); err != nil {
			return nil, err
		}
		if m, err = parseManifestJSON(b); err != nil {
			return nil, err
		}
		if isIndexMediaType(m.MediaType) || len(m.Manifests) > 0 {
			return nil, fmt.Errorf("%w: nested index", ErrBadManifest)
		}
	}
	plan, err := planManifest(m)
	if err != nil {
		return nil, err
	}
	img.Layout, img.Annotations = plan.Layout, plan.Annotations
	if plan.Module.Size > o.maxModuleSize {
		return nil, fmt.Errorf("%w: module layer %s is %d bytes, limit %d", ErrTooLarge, plan.Module.Digest, plan.Module.Size, o.maxModuleSize)
	}
	layer, err := fetchLayer(ctx, repo, plan.Module, o.progress)
	if err != nil {
		return nil, err
	}
	var cfgJSON []byte
	switch plan.Layout {
	case LayoutCompat, LayoutCompatDocker:
		if img.Module, cfgJSON, err = ExtractCompatLayer(layer, o.maxModuleSize); err != nil {
			return nil, err
		}
	default:
		img.Module = layer
	}
	if plan.Config != nil {
		if plan.Config.Size > maxConfigSize {
			return nil, fmt.Errorf("%w: runtime config %s is %d bytes", ErrTooLarge, plan.Config.Digest, plan.Config.Size)
		}
		if cfgJSON, err = content.FetchAll(ctx, repo, *plan.Config); err != nil {
			return nil, err
		}
	}
	if err := CheckHeader(img.Module); err != nil {
		return nil, fmt.Errorf("layer %s (%s): %w", plan.Module.Digest, plan.Module.MediaType, err)
	}
	img.ModuleDigest = digest.FromBytes(img.Module)
	if cfgJSON != nil {
		if img.Config, err = ParseRuntimeConfig(cfgJSON); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadManifest, err)
		}
	} else {
		img.Config = configFromAnnotations(plan.Annotations)
	}
	return img, nil
}

func configFromAnnotations(a map[string]string) RuntimeConfig {
	c := RuntimeConfig{Type: a[AnnotationRuntimeType]}
	if v := a[AnnotationABIVersion]; v != "" {
		c.AbiVersions = strings.Split(v, ",")
	}
	if v := a[AnnotationRootIDs]; v != "" {
		c.RootIDs = strings.Split(v, ",")
	}
	return c
}

// explainNotFound tells an unknown repository from an unknown tag: a registry answers both
// with 404 on the manifest, and oras-go drops the error body, so the tag list is asked.
func explainNotFound(ctx context.Context, repo *remote.Repository, r Reference, err error) error {
	if !errors.Is(err, errdef.ErrNotFound) {
		return err
	}
	terr := repo.Tags(ctx, "", func([]string) error { return errStopTags })
	var er *errcode.ErrorResponse
	if errors.As(terr, &er) && er.StatusCode == http.StatusNotFound {
		return fmt.Errorf("%w: repository %s does not exist in %s", ErrNotFound, r.Repository, r.Registry)
	}
	what := "tag " + r.Tag
	if r.Digest != "" {
		what = "manifest " + r.Digest.String()
	}
	return fmt.Errorf("%w: %s does not exist in %s", ErrNotFound, what, r.Name())
}

var errStopTags = errors.New("stop")
