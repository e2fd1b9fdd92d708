package wasmimage_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"wasme.io/wasme/pkg/wasmimage"
)

// FuzzParseReference: parsing never panics, and a parsed reference's normal form parses back
// to the same reference and never loses a digest.
func FuzzParseReference(f *testing.F) {
	for _, s := range []string{"filter", "user/f:v1", "docker.io/f", "localhost:5000/a/b:c", "registry.example.com/f:v1@" + digest.FromString("x").String(), "a@sha256:zz", "A/b", "f:", "@", ":", "/", "a//b", "127.0.0.1:1/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := wasmimage.ParseReference(s)
		if err != nil {
			return
		}
		again, err := wasmimage.ParseReference(r.String())
		if err != nil || again != r {
			t.Fatalf("%q -> %q -> %v, %v", s, r.String(), again, err)
		}
		if strings.Contains(s, "@") && r.Digest == "" {
			t.Fatalf("%q lost its digest", s)
		}
	})
}

// FuzzDetectLayout: any manifest bytes give a layout or an ErrBadManifest, never a panic.
func FuzzDetectLayout(f *testing.F) {
	for _, l := range wasmimage.WritableLayouts {
		p, err := wasmimage.Pack(tiny, seedConfig, l)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(p.Manifest)
	}
	f.Add([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`))
	f.Add([]byte(`{"schemaVersion":2,"layers":[{"mediaType":"x","digest":"sha256:1","size":-1}]}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := wasmimage.DetectLayout(b)
		if err != nil && !errors.Is(err, wasmimage.ErrBadManifest) {
			t.Fatalf("error %v is not ErrBadManifest", err)
		}
		if err == nil && l == "" {
			t.Fatal("no layout and no error")
		}
	})
}

// FuzzExtractCompatLayer: any layer bytes are refused with a typed error or give a module
// within the limit; paths never escape.
func FuzzExtractCompatLayer(f *testing.F) {
	ok, _ := compatGz(tiny, []byte(`{}`), "LICENSE")
	evil, _ := compatGz(tiny, nil, "../x")
	none, _ := compatGz(nil, nil, "README")
	for _, b := range [][]byte{ok, evil, none, ok[:20], {0x1f, 0x8b}, nil} {
		f.Add(b)
	}
	const limit = 1 << 16
	f.Fuzz(func(t *testing.T, b []byte) {
		m, _, err := wasmimage.ExtractCompatLayer(b, limit)
		if err != nil {
			if !errors.Is(err, wasmimage.ErrBadArchive) && !errors.Is(err, wasmimage.ErrTooLarge) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if int64(len(m)) > limit || m == nil {
			t.Fatalf("module of %d bytes", len(m))
		}
		_ = bytes.Equal(m, tiny)
	})
}
