package node

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// TestProxyV2Image builds the proxyv2 image, unpacks it and runs its programs in a chroot of
// it: the image alone (its libraries, loader and modules) must be enough for pilot-agent, the
// stand-in envoy, curl and the iptables names istio-iptables calls. Needs root (chroot) and
// the Debian packages the image copies.
func TestProxyV2Image(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestProxyV2Image needs root (it runs the image's programs in a chroot)")
	}
	ctx := context.Background()
	img, err := BuildProxyV2(ctx, t.TempDir(), os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.User != "1337:1337" || len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != "/usr/local/bin/pilot-agent" {
		t.Errorf("user %q entrypoint %q", cf.Config.User, cf.Config.Entrypoint)
	}
	again, err := BuildProxyV2(ctx, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var size int64
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		n, err := l.Size()
		if err != nil {
			t.Fatal(err)
		}
		size += n
	}
	t.Logf("proxyv2 image: %d layers, %.1f MiB compressed", len(layers), float64(size)/(1<<20))
	d1, _ := img.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Errorf("two builds differ: %s and %s", d1, d2)
	}

	root := t.TempDir()
	owners, err := unpack(mutate.Extract(img), root)
	if err != nil {
		t.Fatal(err)
	}
	// pilot-agent writes its bootstrap and istio-agent its Wasm modules there as istio-proxy.
	for _, d := range []string{"etc/istio/proxy", "var/lib/istio/data"} {
		if uid, ok := owners[d]; !ok || uid != ProxyUID {
			t.Errorf("%s: owner uid %d (present %v), want %d", d, uid, ok, ProxyUID)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "var/lib/istio/envoy/envoy_bootstrap_tmpl.json")); err != nil {
		t.Error(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"/usr/bin/curl", "--version"}, "curl "},
		{[]string{"/usr/sbin/iptables-nft-save", "--version"}, "nf_tables"},
		{[]string{"/usr/sbin/iptables-restore", "--version"}, "nf_tables"},
		{[]string{"/usr/sbin/ip6tables-nft", "--version"}, "nf_tables"},
		{[]string{"/usr/local/bin/pilot-agent", "version", "--short"}, ""},
		// The stand-in refuses a command line without a bootstrap, saying so.
		{[]string{"/usr/local/bin/envoy"}, "-c (the bootstrap file) is required"},
	} {
		out, err := exec.CommandContext(ctx, "chroot", append([]string{root}, tc.args...)...).CombinedOutput()
		var ee *exec.ExitError
		if err != nil && !(errors.As(err, &ee) && tc.args[0] == "/usr/local/bin/envoy") {
			t.Errorf("%v in the image: %v: %s", tc.args, err, out)
			continue
		}
		if !strings.Contains(string(out), tc.want) {
			t.Errorf("%v in the image: %q lacks %q", tc.args, out, tc.want)
		}
	}
	// The extension modules istio-iptables' rules use, loadable in the image: -m owner, REDIRECT.
	out, err := exec.CommandContext(ctx, "chroot", root, "/usr/sbin/iptables-nft", "-m", "owner", "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--uid-owner") {
		t.Errorf("iptables -m owner in the image: %v: %s", err, out)
	}
}

// unpack writes a flattened image filesystem into dir (regular files, directories, symlinks)
// and returns each entry's owner uid.
func unpack(r io.ReadCloser, dir string) (map[string]int, error) {
	defer r.Close() //nolint:errcheck // read-only
	owners := map[string]int{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return owners, nil
		}
		if err != nil {
			return nil, err
		}
		owners[strings.Trim(filepath.Clean("/"+h.Name), "/")] = h.Uid
		p := filepath.Join(dir, filepath.Clean("/"+h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, os.FileMode(h.Mode)&os.ModePerm); err != nil {
				return nil, err
			}
		case tar.TypeSymlink:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return nil, err
			}
			if err := os.Symlink(h.Linkname, p); err != nil {
				return nil, err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return nil, err
			}
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode)&os.ModePerm)
			if err != nil {
				return nil, err
			}
			if _, err := io.Copy(f, tr); err != nil {
				_ = f.Close()
				return nil, err
			}
			if err := f.Close(); err != nil {
				return nil, err
			}
		}
	}
}
