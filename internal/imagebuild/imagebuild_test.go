package imagebuild_test

import (
	"archive/tar"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"wasme.io/wasme/internal/imagebuild"
	"wasme.io/wasme/internal/testing/registry"
	"wasme.io/wasme/internal/testing/tools"
)

// TestWasmeImage builds the wasme image as make image does, twice in separate build
// directories, and checks what a cluster relies on: the same digest both times, an OCI index
// with both platforms, configs carrying os/architecture, the labels, the non-root user, the
// executable entrypoint and the CA bundle; then the OCI layout and a push to a real registry.
func TestWasmeImage(t *testing.T) {
	ctx := context.Background()
	root := tools.RepoRoot()
	created := time.Unix(1700000000, 0)
	spec := func(dir string) imagebuild.Spec {
		return imagebuild.Spec{
			Package: "./cmd/wasme", Dir: root, Name: "wasme",
			Platforms: []string{"linux/amd64", "linux/arm64"},
			LDFlags:   "-X wasme.io/wasme/internal/cli.Version=v9.9.9",
			Labels: map[string]string{
				imagebuild.LabelSource: "https://example.com/wasme", imagebuild.LabelRevision: "0123abc", imagebuild.LabelVersion: "v9.9.9",
			},
			Created: created, BuildDir: dir,
		}
	}
	idx1, err := imagebuild.Build(ctx, spec(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	idx2, err := imagebuild.Build(ctx, spec(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := idx1.Digest()
	d2, _ := idx2.Digest()
	if d1 != d2 {
		t.Fatalf("two builds of the same source gave %s and %s: not reproducible", d1, d2)
	}

	im, err := idx1.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if im.MediaType != "application/vnd.oci.image.index.v1+json" {
		t.Errorf("index media type %q, want the OCI image index", im.MediaType)
	}
	if got := im.Annotations[imagebuild.LabelRevision]; got != "0123abc" {
		t.Errorf("index annotation revision = %q", got)
	}
	var platforms []string
	for _, desc := range im.Manifests {
		platforms = append(platforms, desc.Platform.String())
		img, err := idx1.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.Platform().String() != desc.Platform.String() {
			t.Errorf("%s: config says %s (containerd refuses a config without the platform)", desc.Platform, cf.Platform())
		}
		if cf.Config.User != "65532:65532" {
			t.Errorf("%s: user %q, want 65532:65532", desc.Platform, cf.Config.User)
		}
		for k, want := range map[string]string{
			imagebuild.LabelSource: "https://example.com/wasme", imagebuild.LabelRevision: "0123abc",
			imagebuild.LabelVersion: "v9.9.9", imagebuild.LabelCreated: "2023-11-14T22:13:20Z",
		} {
			if got := cf.Config.Labels[k]; got != want {
				t.Errorf("%s: label %s = %q, want %q", desc.Platform, k, got, want)
			}
		}
		if !cf.Created.Equal(created) {
			t.Errorf("%s: created %s, want the commit time %s", desc.Platform, cf.Created.Time, created)
		}
		if len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != "/wasme" {
			t.Errorf("%s: entrypoint %q", desc.Platform, cf.Config.Entrypoint)
		}
		files := imageFiles(t, img)
		bin, ok := files["wasme"]
		if !ok || bin.Mode&0o111 == 0 || bin.Uid != 0 || bin.Size < 1<<20 {
			t.Errorf("%s: /wasme is %+v, want a root-owned executable", desc.Platform, bin)
		}
		if !bin.ModTime.Equal(created) {
			t.Errorf("%s: /wasme mtime %s, want the commit time", desc.Platform, bin.ModTime)
		}
		if files["etc/passwd"] == nil || files["tmp/"] == nil {
			t.Errorf("%s: /etc/passwd or /tmp missing: %v", desc.Platform, keys(files))
		}
		checkCerts(t, img)
	}
	if len(platforms) != 2 || platforms[0] != "linux/amd64" || platforms[1] != "linux/arm64" {
		t.Errorf("platforms %v, want linux/amd64 and linux/arm64", platforms)
	}

	// The OCI layout make image writes: index.json names the image index.
	dir := filepath.Join(t.TempDir(), "layout")
	if err := imagebuild.WriteLayout(dir, "v9.9.9", idx1); err != nil {
		t.Fatal(err)
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	top, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	tm, _ := top.IndexManifest()
	if len(tm.Manifests) != 1 || tm.Manifests[0].Digest != d1 || tm.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "v9.9.9" {
		t.Fatalf("layout index.json = %+v, want one entry %s named v9.9.9", tm.Manifests, d1)
	}

	// make image IMAGE=... : pushed with docker config.json credentials.
	reg := registry.StartT(t, registry.Options{Users: map[string]string{"builder": "s3cret"}})
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	ref := reg.Host + "/team/wasme:v9.9.9"
	if _, err := imagebuild.Push(ctx, ref, idx1, false); err == nil {
		t.Fatal("push without credentials succeeded against a registry that requires them")
	}
	writeDockerConfig(t, reg.Host, "builder", "s3cret")
	pinned, err := imagebuild.Push(ctx, ref, idx1, false)
	if err != nil {
		t.Fatal(err)
	}
	if want := reg.Host + "/team/wasme@" + d1.String(); pinned != want {
		t.Fatalf("pushed reference %q, want %q", pinned, want)
	}
}

func imageFiles(t *testing.T, img v1.Image) map[string]*tar.Header {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]*tar.Header{}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			files[h.Name] = h
		}
		rc.Close()
	}
	return files
}

func checkCerts(t *testing.T, img v1.Image) {
	t.Helper()
	layers, _ := img.Layers()
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("no CA bundle in the base layer: %v", err)
		}
		if h.Name != "etc/ssl/certs/ca-certificates.crt" {
			continue
		}
		data, _ := io.ReadAll(tr)
		n := 0
		for block, rest := pem.Decode(data); block != nil; block, rest = pem.Decode(rest) {
			if _, err := x509.ParseCertificate(block.Bytes); err != nil {
				t.Fatalf("CA bundle certificate %d: %v", n, err)
			}
			n++
		}
		if n < 100 {
			t.Fatalf("CA bundle holds %d certificates, want the Mozilla roots (over 100)", n)
		}
		return
	}
}

func writeDockerConfig(t *testing.T, host, user, pass string) {
	t.Helper()
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	cfg := `{"auths":{"` + host + `":{"auth":"` + auth + `"}}}`
	if err := os.WriteFile(filepath.Join(os.Getenv("DOCKER_CONFIG"), "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

func keys(m map[string]*tar.Header) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
