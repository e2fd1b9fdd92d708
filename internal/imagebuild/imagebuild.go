// Package imagebuild builds container images from Go programs without Docker: a static binary
// per platform on an empty base that holds only CA certificates and a non-root user, assembled
// with go-containerregistry and written as an OCI layout or pushed to a registry.
//
// Builds are reproducible: the binaries are built with -trimpath and no build id, every file
// time and the image creation time are one given instant (the commit time), file order and
// ownership are fixed, so the same source and Go version give the same digest.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/crypto/x509roots/fallback/bundle"
)

// NonRootUID is the user the images run as (distroless' "nonroot"); the install manifests
// run the operator as this uid too.
const NonRootUID = 65532

// OCI annotation and label keys the images carry.
const (
	LabelSource   = "org.opencontainers.image.source"
	LabelRevision = "org.opencontainers.image.revision"
	LabelVersion  = "org.opencontainers.image.version"
	LabelCreated  = "org.opencontainers.image.created"
	LabelTitle    = "org.opencontainers.image.title"
	refNameAnno   = "org.opencontainers.image.ref.name"
)

// Spec says what to build.
type Spec struct {
	// Package is the Go main package to build, e.g. "./cmd/wasme", resolved in Dir.
	Package string
	// Dir is the directory go build runs in (the module); "" means the current directory.
	Dir string
	// Name is the binary's name in the image (/Name is the entrypoint); default: the package's base name.
	Name string
	// Args are the image's default arguments (Cmd).
	Args []string
	// Platforms, each "os/arch" (e.g. "linux/amd64"). One platform still yields an index.
	Platforms []string
	// LDFlags are passed to go build in addition to "-s -w -buildid=".
	LDFlags string
	// Labels go into each image's config and, as annotations, onto the index and manifests.
	Labels map[string]string
	// Created is the time recorded in the images and on every file (reproducibility: use the
	// commit time, not the current time). Zero means the Unix epoch.
	Created time.Time
	// BuildDir holds the built binaries; "" means a temporary directory removed afterwards.
	BuildDir string
}

// Build compiles Spec.Package for each platform and returns the image index.
func Build(ctx context.Context, s Spec) (v1.ImageIndex, error) {
	if s.Package == "" || len(s.Platforms) == 0 {
		return nil, fmt.Errorf("imagebuild: a package and at least one platform are needed")
	}
	if s.Name == "" {
		s.Name = filepath.Base(s.Package)
	}
	created := s.Created.UTC()
	if created.IsZero() {
		created = time.Unix(0, 0).UTC()
	}
	if s.Labels == nil {
		s.Labels = map[string]string{}
	}
	labels := map[string]string{LabelCreated: created.Format(time.RFC3339), LabelTitle: s.Name}
	for k, v := range s.Labels {
		labels[k] = v
	}
	buildDir := s.BuildDir
	if buildDir == "" {
		d, err := os.MkdirTemp("", "imagebuild-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		buildDir = d
	}
	base, err := BaseLayer(created)
	if err != nil {
		return nil, err
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	var adds []mutate.IndexAddendum
	for _, p := range s.Platforms {
		plat, err := v1.ParsePlatform(p)
		if err != nil {
			return nil, fmt.Errorf("imagebuild: platform %q: %w", p, err)
		}
		bin := filepath.Join(buildDir, plat.OS+"-"+plat.Architecture, s.Name)
		if err := GoBuild(ctx, s.Dir, s.Package, plat.OS, plat.Architecture, s.LDFlags, bin); err != nil {
			return nil, err
		}
		data, err := os.ReadFile(bin)
		if err != nil {
			return nil, err
		}
		img, err := Image(ImageSpec{
			Platform: *plat, Base: base, Files: []File{{Path: s.Name, Data: data, Mode: 0o755}},
			Entrypoint: []string{"/" + s.Name}, Args: s.Args, Labels: labels, Created: created,
		})
		if err != nil {
			return nil, err
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			Platform: plat, Annotations: labels,
		}})
	}
	idx = mutate.AppendManifests(idx, adds...)
	return mutate.Annotations(idx, labels).(v1.ImageIndex), nil
}

// GoBuild builds pkg for goos/goarch into out: static (CGO_ENABLED=0), -trimpath, without VCS
// stamping or build id, so the binary depends only on the source and the Go version.
func GoBuild(ctx context.Context, dir, pkg, goos, goarch, ldflags, out string) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	args := []string{"build", "-trimpath", "-buildvcs=false", "-ldflags", strings.TrimSpace("-s -w -buildid= " + ldflags), "-o", out, pkg}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+goos, "GOARCH="+goarch, "GOFLAGS=")
	if o, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s for %s/%s: %w\n%s", pkg, goos, goarch, err, o)
	}
	return nil
}

// File is one regular file of a layer; Path is relative to the root. With Link set it is a
// symbolic link to Link instead (Data is ignored).
type File struct {
	Path string
	Data []byte
	Mode int64
	Link string
	// UID and GID own the entry (root when zero).
	UID, GID int
}

// ImageSpec is one single-platform image: the base layer and a layer of files on top.
type ImageSpec struct {
	Platform   v1.Platform
	Base       v1.Layer // nil: no base layer
	Files      []File
	Entrypoint []string
	Args       []string
	Env        []string
	Labels     map[string]string
	Created    time.Time
	// User defaults to NonRootUID:NonRootUID.
	User string
}

// Image assembles one single-platform OCI image. The config carries os and architecture (a
// runtime such as containerd refuses a manifest whose config does not).
func Image(s ImageSpec) (v1.Image, error) {
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	var layers []v1.Layer
	if s.Base != nil {
		layers = append(layers, s.Base)
	}
	if len(s.Files) > 0 {
		l, err := Layer(s.Files, s.Created)
		if err != nil {
			return nil, err
		}
		layers = append(layers, l)
	}
	img, err := mutate.AppendLayers(img, layers...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = s.Platform.OS, s.Platform.Architecture, s.Platform.Variant
	cf.Created = v1.Time{Time: s.Created.UTC()}
	cf.Config.Entrypoint = s.Entrypoint
	cf.Config.Cmd = s.Args
	cf.Config.User = s.User
	if cf.Config.User == "" {
		cf.Config.User = fmt.Sprintf("%d:%d", NonRootUID, NonRootUID)
	}
	defaults := []string{"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"}
	if !slices.ContainsFunc(s.Env, func(e string) bool { return strings.HasPrefix(e, "PATH=") }) {
		defaults = append([]string{"PATH=/"}, defaults...)
	}
	cf.Config.Env = append(defaults, s.Env...)
	cf.Config.WorkingDir = "/"
	cf.Config.Labels = s.Labels
	cf.History = nil
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, err
	}
	return img, nil
}

// BaseLayer is what the images have besides their program: the CA certificates of the pinned
// Mozilla NSS bundle (golang.org/x/crypto/x509roots/fallback, so the digest does not depend on
// the build machine), /etc/passwd and /etc/group naming root and nonroot, and an empty /tmp.
func BaseLayer(created time.Time) (v1.Layer, error) {
	var certs bytes.Buffer
	for r := range bundle.Roots() {
		// A root with constraints beyond X.509 (distrust after a date) cannot be expressed in
		// a PEM bundle; leaving it out is what distributions' bundles do too.
		if r.Constraint != nil {
			continue
		}
		if err := pem.Encode(&certs, &pem.Block{Type: "CERTIFICATE", Bytes: r.Certificate}); err != nil {
			return nil, err
		}
	}
	return Layer([]File{
		{Path: "etc/ssl/certs/ca-certificates.crt", Data: certs.Bytes(), Mode: 0o644},
		{Path: "etc/passwd", Data: fmt.Appendf(nil, "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", NonRootUID, NonRootUID), Mode: 0o644},
		{Path: "etc/group", Data: fmt.Appendf(nil, "root:x:0:\nnonroot:x:%d:\n", NonRootUID), Mode: 0o644},
		{Path: "tmp/", Mode: 0o1777},
		{Path: "home/nonroot/", Mode: 0o700},
	}, created)
}

// Layer writes files (a Path ending in "/" is a directory) into a gzipped tar layer with their
// parent directories, in name order, owned by root (the home directory by nonroot), all times
// set to mtime. archive/tar writes the tar; go-containerregistry makes it a layer.
func Layer(files []File, mtime time.Time) (v1.Layer, error) {
	type entry struct {
		hdr  *tar.Header
		data []byte
	}
	entries := map[string]entry{}
	addDir := func(p string, mode int64) {
		if _, ok := entries[p]; !ok {
			entries[p] = entry{hdr: &tar.Header{Typeflag: tar.TypeDir, Name: p, Mode: mode}}
		}
	}
	for _, f := range files {
		p := strings.TrimPrefix(f.Path, "/")
		isDir := strings.HasSuffix(p, "/")
		clean := filepath.ToSlash(filepath.Clean(p))
		if clean == "." || strings.HasPrefix(clean, "../") {
			return nil, fmt.Errorf("imagebuild: file path %q is outside the image root", f.Path)
		}
		for d := filepath.ToSlash(filepath.Dir(clean)); d != "."; d = filepath.ToSlash(filepath.Dir(d)) {
			addDir(d+"/", 0o755)
		}
		if isDir {
			entries[clean+"/"] = entry{hdr: &tar.Header{Typeflag: tar.TypeDir, Name: clean + "/", Mode: f.Mode, Uid: f.UID, Gid: f.GID}}
			continue
		}
		if f.Link != "" {
			entries[clean] = entry{hdr: &tar.Header{Typeflag: tar.TypeSymlink, Name: clean, Linkname: f.Link, Mode: 0o777, Uid: f.UID, Gid: f.GID}}
			continue
		}
		entries[clean] = entry{hdr: &tar.Header{Typeflag: tar.TypeReg, Name: clean, Mode: f.Mode, Size: int64(len(f.Data)), Uid: f.UID, Gid: f.GID}, data: f.Data}
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := entries[n]
		e.hdr.ModTime, e.hdr.Format = mtime.UTC(), tar.FormatPAX
		if strings.HasPrefix(n, "home/nonroot") {
			e.hdr.Uid, e.hdr.Gid = NonRootUID, NonRootUID
		}
		if err := tw.WriteHeader(e.hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		tarball.WithMediaType(types.OCILayer))
}

// WriteLayout writes idx as an OCI image layout in dir (replacing what was there), its
// index.json naming it ref.
func WriteLayout(dir, ref string, idx v1.ImageIndex) error {
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	p, err := layout.Write(tmp, empty.Index)
	if err != nil {
		return err
	}
	if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{refNameAnno: ref})); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.Rename(tmp, dir)
}

// Push writes idx to ref with the credentials of docker's config.json ($DOCKER_CONFIG or
// ~/.docker/config.json, with its credential helpers), as `wasme push` uses, and returns the
// reference pinned to the pushed digest (repository@sha256:...). Registries on loopback, and
// any when plainHTTP is set (a test's registry on an address it created), are spoken to over
// plain HTTP.
func Push(ctx context.Context, ref string, idx v1.ImageIndex, plainHTTP bool) (string, error) {
	r, err := parseRef(ref, plainHTTP)
	if err != nil {
		return "", err
	}
	if err := remote.WriteIndex(r, idx, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return "", fmt.Errorf("push %s: %w", ref, err)
	}
	d, err := idx.Digest()
	if err != nil {
		return "", err
	}
	return r.Context().Digest(d.String()).String(), nil
}

// PushImage is Push for a single-platform image.
func PushImage(ctx context.Context, ref string, img v1.Image, plainHTTP bool) (string, error) {
	r, err := parseRef(ref, plainHTTP)
	if err != nil {
		return "", err
	}
	if err := remote.Write(r, img, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return "", fmt.Errorf("push %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	return r.Context().Digest(d.String()).String(), nil
}

func parseRef(ref string, plainHTTP bool) (name.Reference, error) {
	var opts []name.Option
	if plainHTTP || isLoopback(ref) {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", ref, err)
	}
	return r, nil
}

func isLoopback(ref string) bool {
	host, _, _ := strings.Cut(ref, "/")
	h := host
	if i := strings.LastIndex(host, ":"); i > 0 && !strings.HasSuffix(host, "]") {
		h = host[:i]
	}
	return h == "localhost" || strings.HasPrefix(h, "127.") || h == "[::1]"
}

// CompressedSize is the sum of the compressed sizes of the distinct layers and configs of idx's
// images (what a registry stores).
func CompressedSize(idx v1.ImageIndex) (int64, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return 0, err
	}
	seen := map[v1.Hash]bool{}
	var total int64
	for _, desc := range im.Manifests {
		img, err := idx.Image(desc.Digest)
		if err != nil {
			return 0, err
		}
		m, err := img.Manifest()
		if err != nil {
			return 0, err
		}
		for _, l := range append([]v1.Descriptor{m.Config}, m.Layers...) {
			if !seen[l.Digest] {
				seen[l.Digest] = true
				total += l.Size
			}
		}
	}
	return total, nil
}
