package wasmimage_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"wasme.io/wasme/internal/testing/wasmbuild"
	"wasme.io/wasme/pkg/wasmimage"
)

func TestParseReference(t *testing.T) {
	d := digest.FromString("x").String()
	cases := []struct {
		in, want, familiar, err string
	}{
		{"filter", "docker.io/library/filter:latest", "filter:latest", ""},
		{"user/filter:v1", "docker.io/user/filter:v1", "user/filter:v1", ""},
		{"docker.io/filter", "docker.io/library/filter:latest", "filter:latest", ""},
		{"index.docker.io/user/f:1", "docker.io/user/f:1", "user/f:1", ""},
		{"registry.example.com/team/filter:1.0", "registry.example.com/team/filter:1.0", "registry.example.com/team/filter:1.0", ""},
		{"localhost/filter", "localhost/filter:latest", "localhost/filter:latest", ""},
		{"127.0.0.1:5000/filter:v2", "127.0.0.1:5000/filter:v2", "127.0.0.1:5000/filter:v2", ""},
		{"registry.example.com/f@" + d, "registry.example.com/f@" + d, "registry.example.com/f@" + d, ""},
		{"registry.example.com/f:v1@" + d, "registry.example.com/f:v1@" + d, "registry.example.com/f:v1@" + d, ""},
		{"", "", "", "empty"},
		{"Filter", "", "", "bad repository name"},
		{"registry.example.com/f:", "", "", "empty tag"},
		{"registry.example.com/f:bad/tag", "", "", "bad repository name"},
		{"registry.example.com/f@sha256:zz", "", "", "bad digest"},
		{"registry.example.com/f@", "", "", "bad digest"},
		{"f:" + strings.Repeat("t", 129), "", "", "bad tag"},
		{" filter", "", "", "white space"},
		{"registry.example.com/", "", "", "bad repository"},
	}
	for _, c := range cases {
		t.Run(c.in, func(t *testing.T) {
			r, err := wasmimage.ParseReference(c.in)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("ParseReference(%q) = %v, %v; want error with %q", c.in, r, err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.String() != c.want || r.Familiar() != c.familiar {
				t.Errorf("got %q / %q, want %q / %q", r.String(), r.Familiar(), c.want, c.familiar)
			}
			again, err := wasmimage.ParseReference(r.String())
			if err != nil || again != r {
				t.Errorf("normal form does not parse to itself: %v %v", again, err)
			}
		})
	}
}

func TestRuntimeConfig(t *testing.T) {
	cases := []struct {
		in   string
		want wasmimage.RuntimeConfig
		err  string
	}{
		{`{"type":"envoy_proxy","abiVersions":["v0.2.1"],"config":{"rootIds":["a","b"]}}`, wasmimage.RuntimeConfig{Type: "envoy_proxy", AbiVersions: []string{"v0.2.1"}, RootIDs: []string{"a", "b"}}, ""},
		{`{"abi_versions":["v0.2.0"],"config":{"root_ids":["x"]}}`, wasmimage.RuntimeConfig{AbiVersions: []string{"v0.2.0"}, RootIDs: []string{"x"}}, ""},
		{`{}`, wasmimage.RuntimeConfig{}, ""},
		{`{"abi_version":"v0.2.1"}`, wasmimage.RuntimeConfig{}, `unknown field "abi_version"`},
		{`{"config":{"rootId":"x"}}`, wasmimage.RuntimeConfig{}, "unknown field config.rootId"},
		{`{"type":3}`, wasmimage.RuntimeConfig{}, "field type"},
		{``, wasmimage.RuntimeConfig{}, "empty"},
		{`[`, wasmimage.RuntimeConfig{}, "runtime config"},
	}
	for _, c := range cases {
		got, err := wasmimage.ParseRuntimeConfig([]byte(c.in))
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: err %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		gj, _ := json.Marshal(got)
		wj, _ := json.Marshal(c.want)
		if !bytes.Equal(gj, wj) {
			t.Errorf("%s: got %s want %s", c.in, gj, wj)
		}
	}
	// The original wasme wrote compact camelCase with defaults omitted; digests depend on it.
	b, _ := json.Marshal(wasmimage.RuntimeConfig{Type: "envoy_proxy", AbiVersions: []string{"v0-4689a30309abf31aee9ae36e73d34b1bb182685f", "v0.2.1"}, RootIDs: []string{"root_id"}})
	if want := `{"type":"envoy_proxy","abiVersions":["v0-4689a30309abf31aee9ae36e73d34b1bb182685f","v0.2.1"],"config":{"rootIds":["root_id"]}}`; string(b) != want {
		t.Errorf("marshal = %s, want %s", b, want)
	}
}

func TestValidateModule(t *testing.T) {
	ctx := context.Background()
	broken := append(wasmbuild.TinyModule("proxy_abi_version_0_2_1"), 0x0a, 0x05, 0x01, 0x03, 0x00, 0xff, 0x0b)
	cases := []struct {
		name    string
		wasm    []byte
		abi     string
		wantErr string
	}{
		{"0.2.1", wasmbuild.TinyModule("proxy_abi_version_0_2_1"), "v0.2.1", ""},
		{"0.2.0", wasmbuild.TinyModule("proxy_abi_version_0_2_0"), "v0.2.0", ""},
		{"0.1.0 and 0.2.1: the first export wins, as in Envoy", wasmbuild.TinyModule("proxy_abi_version_0_1_0", "proxy_abi_version_0_2_1"), "v0.1.0", ""},
		{"no ABI export", wasmbuild.TinyModule("_start"), "", "valid WebAssembly, but not a proxy-wasm filter: no proxy_abi_version_* export"},
		{"unknown ABI", wasmbuild.TinyModule("proxy_abi_version_9_9_9"), "", "proxy_abi_version_9_9_9, an ABI version Envoy does not know"},
		{"empty", nil, "", "bad magic"},
		{"text", []byte("(module)"), "", "bad magic"},
		{"version 2", []byte{0, 'a', 's', 'm', 2, 0, 0, 0}, "", "version 2"},
		{"bad body", broken, "", "does not compile"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			abi, err := wasmimage.ValidateModule(ctx, c.wasm)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) || !(errors.Is(err, wasmimage.ErrNotWasm) || errors.Is(err, wasmimage.ErrNotFilter)) {
					t.Fatalf("err %v, want ErrNotWasm or ErrNotFilter with %q", err, c.wantErr)
				}
				return
			}
			if err != nil || abi != c.abi {
				t.Fatalf("= %q, %v; want %q", abi, err, c.abi)
			}
		})
	}
}

func TestDetectLayout(t *testing.T) {
	for _, l := range wasmimage.WritableLayouts {
		p, err := wasmimage.Pack(tiny, seedConfig, l)
		if err != nil {
			t.Fatal(err)
		}
		got, err := wasmimage.DetectLayout(p.Manifest)
		if err != nil || got != l {
			t.Errorf("DetectLayout(%s manifest) = %s, %v", l, got, err)
		}
		again, _ := wasmimage.Pack(tiny, seedConfig, l)
		if again.ManifestDesc.Digest != p.ManifestDesc.Digest {
			t.Errorf("%s: packing twice gave two digests", l)
		}
	}
	p, _ := wasmimage.Pack(tiny, seedConfig, wasmimage.LayoutWasme)
	var m struct {
		Layers []struct{ MediaType string } `json:"layers"`
		Config struct{ MediaType string }   `json:"config"`
	}
	if err := json.Unmarshal(p.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	if len(m.Layers) != 2 || m.Layers[0].MediaType != wasmimage.MediaTypeWasmeConfig || m.Layers[1].MediaType != wasmimage.MediaTypeWasmeContentLayer || m.Config.MediaType != wasmimage.MediaTypeWasmeConfig {
		t.Errorf("wasme layout is not [config, wasm] with the runtime config as config: %s", p.Manifest)
	}
	bad := []struct{ name, manifest, err string }{
		{"not json", `{`, "not JSON"},
		{"schema 1", `{"schemaVersion":1}`, "schemaVersion 1"},
		{"no layers", `{"schemaVersion":2,"layers":[]}`, "no layers"},
		{"index", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`, "an index"},
		{"bad digest", `{"schemaVersion":2,"layers":[{"mediaType":"application/wasm","digest":"sha256:1","size":1}]}`, "descriptor digest"},
		{"two tar layers of other types", `{"schemaVersion":2,"layers":[{"mediaType":"a/b","digest":"` + digest.FromString("a").String() + `","size":1},{"mediaType":"c/d","digest":"` + digest.FromString("b").String() + `","size":1}]}`, "no Wasm layer"},
	}
	for _, c := range bad {
		if _, err := wasmimage.DetectLayout([]byte(c.manifest)); err == nil || !strings.Contains(err.Error(), c.err) || !errors.Is(err, wasmimage.ErrBadManifest) {
			t.Errorf("%s: err %v, want %q", c.name, err, c.err)
		}
	}
}

func TestExtractCompatLayer(t *testing.T) {
	ok, _ := compatGz(tiny, []byte(`{}`), "LICENSE")
	noPlugin, _ := compatGz(nil, nil, "README")
	evil, _ := compatGz(tiny, nil, "../x")
	abs, _ := compatGz(tiny, nil, "/etc/passwd")
	bomb, _ := compatGz(make([]byte, 1<<20), nil, "")
	cases := []struct {
		name  string
		layer []byte
		max   int64
		err   error
		msg   string
	}{
		{"ok", ok, 0, nil, ""},
		{"no plugin.wasm", noPlugin, 0, wasmimage.ErrBadArchive, "no plugin.wasm"},
		{"dot dot", evil, 0, wasmimage.ErrBadArchive, "escapes"},
		{"absolute", abs, 0, wasmimage.ErrBadArchive, "absolute path"},
		{"too large", bomb, 1024, wasmimage.ErrTooLarge, "limit 1024"},
		{"not gzip nor tar", []byte("garbage that is long enough to not be a tar header at all"), 0, wasmimage.ErrBadArchive, "tar"},
		{"truncated gzip", ok[:len(ok)/2], 0, wasmimage.ErrBadArchive, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, cfg, err := wasmimage.ExtractCompatLayer(c.layer, c.max)
			if c.err == nil {
				if err != nil || !bytes.Equal(m, tiny) || string(cfg) != "{}" {
					t.Fatalf("= %d bytes, %q, %v", len(m), cfg, err)
				}
				return
			}
			if !errors.Is(err, c.err) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("err %v, want %v with %q", err, c.err, c.msg)
			}
		})
	}
}

func TestStore(t *testing.T) {
	s, err := wasmimage.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ref := func(s string) wasmimage.Reference {
		r, err := wasmimage.ParseReference(s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	a := ref("registry.example.com/f:v1")
	if _, err := s.Put(a, tiny, seedConfig, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(a, []byte("nope"), seedConfig, ""); !errors.Is(err, wasmimage.ErrNotWasm) {
		t.Errorf("Put of non-wasm: %v", err)
	}
	if _, err := s.Tag(a, ref("registry.example.com/f:v2")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Tag(ref("registry.example.com/none:v1"), a); !errors.Is(err, wasmimage.ErrNotInStore) {
		t.Errorf("Tag of unknown source: %v", err)
	}
	e, m, err := s.Get(ref("registry.example.com/f:v2"))
	if err != nil || !bytes.Equal(m, tiny) || e.Config.RootID() != "add_header" {
		t.Fatalf("Get = %v, %v", e, err)
	}

	// Many writers at once, on the same and on different refs: every entry readable and
	// complete afterwards, no temporary file left.
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			mod := wasmbuild.TinyModule("proxy_abi_version_0_2_1", strings.Repeat("x", i+1))
			if _, err := s.Put(ref("registry.example.com/c:same"), mod, seedConfig, ""); err != nil {
				t.Error(err)
			}
			if _, err := s.Put(ref("registry.example.com/c:v"+string(rune('a'+i))), mod, seedConfig, ""); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	list, err := s.List()
	if err != nil || len(list) != 19 {
		t.Fatalf("List = %d entries, %v; want 19", len(list), err)
	}
	for _, e := range list {
		if _, _, err := s.Get(ref(e.Ref)); err != nil {
			t.Errorf("%s: %v", e.Ref, err)
		}
	}
	if err := filepath.WalkDir(s.Dir(), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), ".tmp-") {
			t.Errorf("temporary file left: %s", p)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	// A module changed on disk is refused, not served.
	_ = os.WriteFile(filepath.Join(s.Dir(), "blobs", "sha256", e.ModuleDigest.Encoded()), []byte("tampered"), 0o644)
	if _, _, err := s.Get(a); !errors.Is(err, wasmimage.ErrDigestMismatch) {
		t.Errorf("Get of tampered module: %v", err)
	}
	if err := s.Delete(a); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Entry(a); !errors.Is(err, wasmimage.ErrNotInStore) {
		t.Errorf("Entry after Delete: %v", err)
	}
}
