package wasmimage_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/registry/remote"

	"wasme.io/wasme/internal/testing/registry"
	"wasme.io/wasme/internal/testing/wasmbuild"
	"wasme.io/wasme/pkg/wasmimage"
)

var tiny = wasmbuild.TinyModule("proxy_abi_version_0_2_1")

var plain = wasmimage.WithPlainHTTP(true)

// pushRaw pushes blobs and a manifest exactly as given, for layouts wasme never writes.
func pushRaw(t *testing.T, host, repo, tag string, manifest []byte, mediaType string, blobs ...[]byte) digest.Digest {
	t.Helper()
	ctx := context.Background()
	r, err := remote.NewRepository(host + "/" + repo)
	if err != nil {
		t.Fatal(err)
	}
	r.PlainHTTP = true
	for _, b := range blobs {
		d := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(b), Size: int64(len(b))}
		if ok, _ := r.Exists(ctx, d); ok {
			continue
		}
		if err := r.Push(ctx, d, bytes.NewReader(b)); err != nil {
			t.Fatalf("push blob: %v", err)
		}
	}
	d := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(manifest), Size: int64(len(manifest))}
	if err := r.PushReference(ctx, d, bytes.NewReader(manifest), tag); err != nil {
		t.Fatalf("push manifest: %v", err)
	}
	return d.Digest
}

func desc(mt string, b []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPullForeignLayouts pushes layouts other tools write, byte for byte, and reads them.
func TestPullForeignLayouts(t *testing.T) {
	ctx := context.Background()
	reg := registry.StartT(t, registry.Options{})
	cfgJSON := []byte(`{"type":"envoy_proxy","abiVersions":["v0.2.1"],"config":{"rootIds":["add_header"]}}`)
	emptyCfg := []byte("{}")
	gz, err := compatGz(tiny, cfgJSON, "LICENSE")
	if err != nil {
		t.Fatal(err)
	}
	label := []byte("earlier layer, e.g. LABEL metadata")
	manifest := func(mt string, config ocispec.Descriptor, layers ...ocispec.Descriptor) []byte {
		return mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": mt, "config": config, "layers": layers})
	}
	wasmeNoMT := mustJSON(t, map[string]any{"schemaVersion": 2, "config": desc(wasmimage.MediaTypeWasmeConfig, cfgJSON), "layers": []ocispec.Descriptor{desc(wasmimage.MediaTypeWasmeConfig, cfgJSON), desc(wasmimage.MediaTypeWasmeContentLayer, tiny)}})
	cases := []struct {
		name     string
		manifest []byte
		mt       string
		blobs    [][]byte
		layout   wasmimage.Layout
		rootID   string
	}{
		{"original wasme (no mediaType field)", wasmeNoMT, ocispec.MediaTypeImageManifest, [][]byte{cfgJSON, tiny}, wasmimage.LayoutWasme, "add_header"},
		{"wasm-to-oci", manifest(ocispec.MediaTypeImageManifest, desc("application/vnd.wasm.config.v1+json", emptyCfg), desc(wasmimage.MediaTypeWasmToOCILayer, tiny)), ocispec.MediaTypeImageManifest, [][]byte{emptyCfg, tiny}, wasmimage.LayoutWasmToOCI, ""},
		{"raw single layer", manifest(ocispec.MediaTypeImageManifest, desc(ocispec.MediaTypeImageConfig, emptyCfg), desc("application/octet-stream", tiny)), ocispec.MediaTypeImageManifest, [][]byte{emptyCfg, tiny}, wasmimage.LayoutRawLayer, ""},
		{"compat OCI with earlier layer", manifest(ocispec.MediaTypeImageManifest, desc(ocispec.MediaTypeImageConfig, emptyCfg), desc(ocispec.MediaTypeImageLayer, label), desc(wasmimage.MediaTypeOCILayerTarGzip, gz)), ocispec.MediaTypeImageManifest, [][]byte{emptyCfg, label, gz}, wasmimage.LayoutCompat, "add_header"},
		{"compat Docker", manifest(wasmimage.MediaTypeDockerManifest, desc(wasmimage.MediaTypeDockerConfig, emptyCfg), desc(wasmimage.MediaTypeDockerLayerGzip, gz)), wasmimage.MediaTypeDockerManifest, [][]byte{emptyCfg, gz}, wasmimage.LayoutCompatDocker, "add_header"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tag := "v" + strconv.Itoa(i)
			md := pushRaw(t, reg.Host, "foreign", tag, c.manifest, c.mt, c.blobs...)
			img, err := wasmimage.Pull(ctx, reg.Host+"/foreign:"+tag, plain)
			if err != nil {
				t.Fatalf("pull: %v", err)
			}
			if !bytes.Equal(img.Module, tiny) || img.ModuleDigest != digest.FromBytes(tiny) || img.ManifestDigest != md {
				t.Errorf("got module %s manifest %s, want %s %s", img.ModuleDigest, img.ManifestDigest, digest.FromBytes(tiny), md)
			}
			if img.Layout != c.layout || img.Config.RootID() != c.rootID {
				t.Errorf("layout %s root %q, want %s %q", img.Layout, img.Config.RootID(), c.layout, c.rootID)
			}
		})
	}
	t.Run("image index picks wasip1", func(t *testing.T) {
		res, err := wasmimage.Push(ctx, reg.Host+"/indexed:wasm", tiny, seedConfig, plain)
		if err != nil {
			t.Fatal(err)
		}
		other, err := wasmimage.Push(ctx, reg.Host+"/indexed:other", wasmbuild.TinyModule("proxy_abi_version_0_1_0"), seedConfig, plain)
		if err != nil {
			t.Fatal(err)
		}
		m := func(d digest.Digest, os, arch string) map[string]any {
			mb, _ := manifestSize(t, reg.Host, "indexed", d)
			return map[string]any{"mediaType": ocispec.MediaTypeImageManifest, "digest": d, "size": mb, "platform": map[string]string{"os": os, "architecture": arch}}
		}
		idx := mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": ocispec.MediaTypeImageIndex, "manifests": []any{m(other.ManifestDigest, "linux", "amd64"), m(res.ManifestDigest, "wasip1", "wasm")}})
		id := pushRaw(t, reg.Host, "indexed", "multi", idx, ocispec.MediaTypeImageIndex)
		img, err := wasmimage.Pull(ctx, reg.Host+"/indexed:multi", plain)
		if err != nil {
			t.Fatal(err)
		}
		if img.ModuleDigest != digest.FromBytes(tiny) || img.ManifestDigest != id {
			t.Errorf("index pull got module %s manifest %s", img.ModuleDigest, img.ManifestDigest)
		}
	})
}

func manifestSize(t *testing.T, host, repo string, d digest.Digest) (int64, error) {
	r, _ := remote.NewRepository(host + "/" + repo)
	r.PlainHTTP = true
	desc, err := r.Resolve(context.Background(), d.String())
	if err != nil {
		t.Fatal(err)
	}
	return desc.Size, nil
}

func TestAuthAndTLS(t *testing.T) {
	ctx := context.Background()
	users := map[string]string{"alice": "s3cret"}
	reg := registry.StartT(t, registry.Options{Users: users, TLS: true})
	ref := reg.Host + "/secure/filter:v1"
	ca := wasmimage.WithCAFile(reg.CAFile)
	if _, err := wasmimage.Push(ctx, ref, tiny, seedConfig, ca, wasmimage.WithCredentials("alice", "s3cret")); err != nil {
		t.Fatalf("push with credentials: %v", err)
	}
	secret := mustJSON(t, map[string]any{"auths": map[string]any{reg.Host: map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))}}})
	legacy := mustJSON(t, map[string]any{"https://" + reg.Host: map[string]string{"username": "alice", "password": "s3cret"}})
	wrong := mustJSON(t, map[string]any{"auths": map[string]any{reg.Host: map[string]string{"username": "alice", "password": "nope"}}})
	cases := []struct {
		name    string
		opts    []wasmimage.Option
		wantErr error
		wantMsg string
	}{
		{"dockerconfigjson secret", []wasmimage.Option{ca, wasmimage.WithDockerConfigJSON(secret)}, nil, ""},
		{"legacy dockercfg", []wasmimage.Option{ca, wasmimage.WithDockerConfigJSON(legacy)}, nil, ""},
		{"CA as PEM", []wasmimage.Option{wasmimage.WithCAPEM(reg.CAPEM), wasmimage.WithCredentials("alice", "s3cret")}, nil, ""},
		{"insecure skip verify", []wasmimage.Option{wasmimage.WithInsecureSkipVerify(true), wasmimage.WithCredentials("alice", "s3cret")}, nil, ""},
		{"wrong password", []wasmimage.Option{ca, wasmimage.WithDockerConfigJSON(wrong)}, wasmimage.ErrUnauthorized, "refused the credentials"},
		{"no credentials", []wasmimage.Option{ca}, wasmimage.ErrUnauthorized, "requires credentials"},
		{"unknown CA", []wasmimage.Option{wasmimage.WithCredentials("alice", "s3cret")}, nil, "TLS with"},
		{"plain http to a TLS registry", []wasmimage.Option{plain, wasmimage.WithCredentials("alice", "s3cret"), wasmimage.WithRetries(0)}, nil, "HTTP 400"},
		{"malformed secret", []wasmimage.Option{ca, wasmimage.WithDockerConfigJSON([]byte("{not json"))}, nil, "docker config JSON"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img, err := wasmimage.Pull(ctx, ref, c.opts...)
			if c.wantErr == nil && c.wantMsg == "" {
				if err != nil {
					t.Fatalf("pull: %v", err)
				}
				if img.ModuleDigest != digest.FromBytes(tiny) {
					t.Errorf("module digest %s", img.ModuleDigest)
				}
				return
			}
			if err == nil {
				t.Fatal("pull succeeded, want an error")
			}
			t.Logf("error: %v", err)
			checkOneLine(t, err)
			if c.wantErr != nil && !errors.Is(err, c.wantErr) {
				t.Errorf("error %q is not %v", err, c.wantErr)
			}
			if !strings.Contains(err.Error(), c.wantMsg) {
				t.Errorf("error %q does not say %q", err, c.wantMsg)
			}
		})
	}
}

func checkOneLine(t *testing.T, err error) {
	t.Helper()
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error spans lines: %q", err)
	}
	if len(err.Error()) > 400 {
		t.Errorf("error is too long (%d chars): %q", len(err.Error()), err)
	}
}

func TestPullBadInput(t *testing.T) {
	ctx := context.Background()
	reg := registry.StartT(t, registry.Options{})
	proxy := registry.NewProxy(t, reg)
	good, err := wasmimage.Push(ctx, reg.Host+"/bad/filter:good", tiny, seedConfig, plain)
	if err != nil {
		t.Fatal(err)
	}
	notWasm := []byte("#!/bin/sh\necho this is not wasm\n")
	pushRaw(t, reg.Host, "bad/filter", "notwasm", mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": ocispec.MediaTypeImageManifest, "config": desc(wasmimage.MediaTypeWasmeConfig, []byte("{}")), "layers": []any{desc(wasmimage.MediaTypeWasmeContentLayer, notWasm)}}), ocispec.MediaTypeImageManifest, []byte("{}"), notWasm)
	evil, err := compatGz(tiny, nil, "../../etc/evil")
	if err != nil {
		t.Fatal(err)
	}
	noPlugin, err := compatGz(nil, nil, "README")
	if err != nil {
		t.Fatal(err)
	}
	for tag, gz := range map[string][]byte{"evil": evil, "noplugin": noPlugin} {
		pushRaw(t, reg.Host, "bad/filter", tag, mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": ocispec.MediaTypeImageManifest, "config": desc(ocispec.MediaTypeImageConfig, []byte("{}")), "layers": []any{desc(wasmimage.MediaTypeOCILayerTarGzip, gz)}}), ocispec.MediaTypeImageManifest, []byte("{}"), gz)
	}
	big := append(wasmbuild.TinyModule("proxy_abi_version_0_2_1"), make([]byte, 4096)...)
	if _, err := wasmimage.Push(ctx, reg.Host+"/bad/filter:big", big, seedConfig, plain); err != nil {
		t.Fatal(err)
	}
	down := registry.StartT(t, registry.Options{})
	down.Stop()

	cases := []struct {
		name    string
		ref     string
		opts    []wasmimage.Option
		setup   func()
		wantErr error
		wantMsg string
	}{
		{"unknown tag", reg.Host + "/bad/filter:nope", nil, nil, wasmimage.ErrNotFound, "tag nope does not exist"},
		{"unknown repository", reg.Host + "/no/such/repo:v1", nil, nil, wasmimage.ErrNotFound, "repository no/such/repo does not exist"},
		{"unknown digest", reg.Host + "/bad/filter@" + digest.FromString("x").String(), nil, nil, wasmimage.ErrNotFound, "does not exist"},
		{"registry down", down.Host + "/bad/filter:good", []wasmimage.Option{wasmimage.WithRetries(1)}, nil, wasmimage.ErrUnreachable, "connection refused"},
		{"layer is not wasm", reg.Host + "/bad/filter:notwasm", nil, nil, wasmimage.ErrNotWasm, "bad magic bytes"},
		{"over the size limit", reg.Host + "/bad/filter:big", []wasmimage.Option{wasmimage.WithMaxModuleSize(1024)}, nil, wasmimage.ErrTooLarge, "limit 1024"},
		{"tar with ../ path", reg.Host + "/bad/filter:evil", nil, nil, wasmimage.ErrBadArchive, "escapes the archive root"},
		{"tar without plugin.wasm", reg.Host + "/bad/filter:noplugin", nil, nil, wasmimage.ErrBadArchive, "no plugin.wasm"},
		{"malformed reference", "Not A Reference", nil, nil, nil, "invalid reference"},
		{"malformed reference (bad digest)", reg.Host + "/bad/filter@sha256:123", nil, nil, nil, "bad digest"},
		{"tampered blob", proxy.Host + "/bad/filter:good", nil, func() {
			proxy.SetModify(func(r *http.Request, resp *http.Response) error {
				if strings.Contains(r.URL.Path, "/blobs/"+good.ModuleDigest.String()) {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					b[len(b)-1] ^= 0xff
					resp.Body = io.NopCloser(bytes.NewReader(b))
				}
				return nil
			})
		}, wasmimage.ErrDigestMismatch, "does not match its digest"},
		{"malformed manifest JSON", proxy.Host + "/bad/filter:good", nil, func() {
			bad := []byte(`{"schemaVersion": 2, "layers": [`)
			proxy.SetModify(func(r *http.Request, resp *http.Response) error {
				if strings.Contains(r.URL.Path, "/manifests/") {
					resp.Body.Close()
					resp.Body = io.NopCloser(bytes.NewReader(bad))
					resp.ContentLength = int64(len(bad))
					resp.Header.Set("Content-Length", strconv.Itoa(len(bad)))
					resp.Header.Set("Docker-Content-Digest", digest.FromBytes(bad).String())
				}
				return nil
			})
		}, wasmimage.ErrBadManifest, "not JSON"},
		{"digest pin does not match", proxy.Host + "/bad/filter@" + good.ManifestDigest.String(), nil, func() {
			other := []byte(`{"schemaVersion":2}`)
			proxy.SetModify(func(r *http.Request, resp *http.Response) error {
				if strings.Contains(r.URL.Path, "/manifests/") {
					resp.Body.Close()
					resp.Body = io.NopCloser(bytes.NewReader(other))
					resp.ContentLength = int64(len(other))
					resp.Header.Set("Content-Length", strconv.Itoa(len(other)))
				}
				return nil
			})
		}, wasmimage.ErrDigestMismatch, ""},
		{"registry always 500", proxy.Host + "/bad/filter:good", []wasmimage.Option{wasmimage.WithRetries(1)}, func() {
			proxy.SetModify(nil)
			proxy.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
				http.Error(w, "boom", http.StatusInternalServerError)
				return true
			})
		}, nil, "HTTP 500"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.setup != nil {
				c.setup()
			}
			_, err := wasmimage.Pull(ctx, c.ref, append([]wasmimage.Option{plain}, c.opts...)...)
			if err == nil {
				t.Fatal("pull succeeded, want an error")
			}
			t.Logf("error: %v", err)
			checkOneLine(t, err)
			if c.wantErr != nil && !errors.Is(err, c.wantErr) {
				t.Errorf("error %q is not %v", err, c.wantErr)
			}
			if !strings.Contains(err.Error(), c.wantMsg) {
				t.Errorf("error %q does not say %q", err, c.wantMsg)
			}
		})
	}

	t.Run("500 once then recovery", func(t *testing.T) {
		proxy.SetModify(nil)
		var failed atomic.Int32
		proxy.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
			if strings.Contains(r.URL.Path, "/blobs/") && failed.Add(1) == 1 {
				http.Error(w, "transient", http.StatusInternalServerError)
				return true
			}
			return false
		})
		defer proxy.SetFault(nil)
		img, err := wasmimage.Pull(ctx, proxy.Host+"/bad/filter:good", plain)
		if err != nil {
			t.Fatalf("pull after one 500: %v", err)
		}
		if failed.Load() < 2 || img.ModuleDigest != good.ModuleDigest {
			t.Errorf("blob requests %d (want the failed one retried), module %s", failed.Load(), img.ModuleDigest)
		}
	})
	t.Run("push 500 once then recovery", func(t *testing.T) {
		var failed atomic.Int32
		proxy.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
			if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/manifests/") && failed.Add(1) == 1 {
				http.Error(w, "transient", http.StatusServiceUnavailable)
				return true
			}
			return false
		})
		defer proxy.SetFault(nil)
		if _, err := wasmimage.Push(ctx, proxy.Host+"/bad/filter:pushed", tiny, seedConfig, plain); err != nil {
			t.Fatalf("push after one 503: %v", err)
		}
		if failed.Load() < 2 {
			t.Errorf("manifest PUTs %d, want the failed one retried", failed.Load())
		}
	})
}

func TestPushBadInput(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name, ref string
		module    []byte
		opts      []wasmimage.Option
		wantMsg   string
	}{
		{"not wasm", "127.0.0.1:1/x:v1", []byte("hello"), nil, "bad magic bytes"},
		{"digest target", "127.0.0.1:1/x@" + digest.FromString("x").String(), tiny, nil, "needs a tag"},
		{"malformed reference", "UPPER/case:v1", tiny, nil, "invalid reference"},
		{"unknown layout", "127.0.0.1:1/x:v1", tiny, []wasmimage.Option{wasmimage.WithLayout("nope")}, "cannot write layout"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := wasmimage.Push(ctx, c.ref, c.module, seedConfig, append([]wasmimage.Option{plain}, c.opts...)...)
			if err == nil || !strings.Contains(err.Error(), c.wantMsg) {
				t.Fatalf("err = %v, want %q", err, c.wantMsg)
			}
			t.Logf("error: %v", err)
			checkOneLine(t, err)
		})
	}
}

var _ = fmt.Sprint
