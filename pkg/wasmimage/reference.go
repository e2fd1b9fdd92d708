package wasmimage

import (
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
	"oras.land/oras-go/v2/registry"
)

// Reference is a normalised image reference. Tag and Digest may both be set
// (name:tag@sha256:...); the digest then decides what is pulled and the tag is kept for display.
type Reference struct {
	// Registry is the registry host[:port], "docker.io" for Docker Hub.
	Registry string
	// Repository is the path within the registry, "library/x" for Docker Hub's official images.
	Repository string
	// Tag is the tag, "latest" when the reference had neither tag nor digest.
	Tag string
	// Digest is the manifest digest the reference is pinned to, if any.
	Digest digest.Digest
}

const dockerHub = "docker.io"

// ParseReference parses and normalises an image reference the way docker does: no registry
// means docker.io, a single-component Docker Hub name gets library/, no tag and no digest means
// :latest. Unlike the original wasme it never drops a digest.
func ParseReference(s string) (Reference, error) {
	if s == "" {
		return Reference{}, fmt.Errorf("invalid reference %q: empty", s)
	}
	if strings.TrimSpace(s) != s || strings.ContainsAny(s, " \t\r\n") {
		return Reference{}, fmt.Errorf("invalid reference %q: contains white space", s)
	}
	var ref Reference
	name := s
	if i := strings.IndexByte(name, '@'); i >= 0 {
		d, err := digest.Parse(name[i+1:])
		if err != nil {
			return Reference{}, fmt.Errorf("invalid reference %q: bad digest: %w", s, err)
		}
		ref.Digest = d
		name = name[:i]
	}
	if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		ref.Tag = name[i+1:]
		name = name[:i]
		if ref.Tag == "" {
			return Reference{}, fmt.Errorf("invalid reference %q: empty tag", s)
		}
	}
	if name == "" {
		return Reference{}, fmt.Errorf("invalid reference %q: no repository", s)
	}
	first, rest, hasSlash := strings.Cut(name, "/")
	if hasSlash && (strings.ContainsAny(first, ".:") || first == "localhost") {
		ref.Registry, ref.Repository = first, rest
	} else {
		ref.Registry, ref.Repository = dockerHub, name
	}
	if ref.Registry == "index.docker.io" || ref.Registry == "registry-1.docker.io" {
		ref.Registry = dockerHub
	}
	if ref.Registry == dockerHub && !strings.Contains(ref.Repository, "/") {
		ref.Repository = "library/" + ref.Repository
	}
	if ref.Tag == "" && ref.Digest == "" {
		ref.Tag = "latest"
	}
	if err := ref.validate(); err != nil {
		return Reference{}, fmt.Errorf("invalid reference %q: %w", s, err)
	}
	return ref, nil
}

func (r Reference) validate() error {
	o := registry.Reference{Registry: r.Registry, Repository: r.Repository}
	if err := o.ValidateRegistry(); err != nil {
		return fmt.Errorf("bad registry %q", r.Registry)
	}
	if err := o.ValidateRepository(); err != nil {
		return fmt.Errorf("bad repository name %q (lower case letters, digits, separators . _ - /)", r.Repository)
	}
	if r.Tag != "" {
		o.Reference = r.Tag
		if err := o.ValidateReferenceAsTag(); err != nil {
			return fmt.Errorf("bad tag %q", r.Tag)
		}
	}
	return nil
}

// Name is registry/repository, without tag or digest.
func (r Reference) Name() string { return r.Registry + "/" + r.Repository }

// String is the full normalised form: registry/repository[:tag][@digest].
func (r Reference) String() string {
	s := r.Name()
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != "" {
		s += "@" + r.Digest.String()
	}
	return s
}

// Familiar is the short form people type: docker.io and library/ left out.
func (r Reference) Familiar() string {
	s := r.String()
	if r.Registry == dockerHub {
		s = strings.TrimPrefix(strings.TrimPrefix(s, dockerHub+"/"), "library/")
	}
	return s
}

// target is what a registry is asked for: the digest when pinned, else the tag.
func (r Reference) target() string {
	if r.Digest != "" {
		return r.Digest.String()
	}
	return r.Tag
}

// WithTag returns the reference with another tag and no digest.
func (r Reference) WithTag(tag string) Reference {
	r.Tag, r.Digest = tag, ""
	return r
}

func (r Reference) orasRepo() string { return r.Name() }
