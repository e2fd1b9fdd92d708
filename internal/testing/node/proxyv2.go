package node

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"wasme.io/wasme/internal/imagebuild"
	"wasme.io/wasme/internal/testing/tools"
)

// ProxyUID is the uid (and gid) of istio-proxy, as in Istio's images and injector.
const ProxyUID = 1337

// PushProxyV2 builds the proxyv2 image (BuildProxyV2) and pushes it as proxyv2:tag to the
// node's registry, beside the other Istio images, so that istioctl install with
// hub=RegistryHost and that tag finds it; it returns the reference by digest as the node pulls
// it.
func (n *Node) PushProxyV2(ctx context.Context, tag string) (string, error) {
	img, err := BuildProxyV2(ctx, n.path("build", "proxyv2"), n.progress)
	if err != nil {
		return "", err
	}
	pushed, err := imagebuild.PushImage(ctx, n.Registry.Host+"/proxyv2:"+tag, img, true)
	if err != nil {
		return "", err
	}
	return n.NodeRef(pushed), nil
}

// BuildProxyV2 assembles the sidecar image Istio's injector names: the real pilot-agent of the
// pinned Istio at /usr/local/bin/pilot-agent (its entrypoint), wasme's test proxy (package
// standin) at /usr/local/bin/envoy where pilot-agent starts Envoy, the pinned module's
// bootstrap template at /var/lib/istio/envoy/envoy_bootstrap_tmpl.json, the istio-proxy user
// 1337, and from this machine's Debian packages curl (for the seed's kubectl exec) and the
// nft iptables (xtables-nft-multi as iptables, iptables-save, iptables-restore and the -nft
// and ip6tables names; for the istio-init container's pilot-agent istio-iptables), each with
// the shared libraries ldd names and iptables' extension modules. Nothing is downloaded: the
// Go programs build from the module cache, the rest is copied from the machine, so the digest
// follows the pins and the installed Debian packages. work holds the builds.
func BuildProxyV2(ctx context.Context, work string, progress io.Writer) (v1.Image, error) {
	agent, err := tools.PilotAgent(progress)
	if err != nil {
		return nil, err
	}
	istioDir, err := tools.IstioDir()
	if err != nil {
		return nil, err
	}
	envoy := filepath.Join(work, "envoy")
	if err := imagebuild.GoBuild(ctx, tools.RepoRoot(), "./internal/testing/standin/envoy", "linux", runtime.GOARCH, "", envoy); err != nil {
		return nil, err
	}
	var files []imagebuild.File
	add := func(path, from string, mode int64) error {
		b, err := os.ReadFile(from)
		if err != nil {
			return fmt.Errorf("proxyv2 image: %w", err)
		}
		files = append(files, imagebuild.File{Path: path, Data: b, Mode: mode})
		return nil
	}
	if err := add("usr/local/bin/pilot-agent", agent, 0o755); err != nil {
		return nil, err
	}
	if err := add("usr/local/bin/envoy", envoy, 0o755); err != nil {
		return nil, err
	}
	if err := add("var/lib/istio/envoy/envoy_bootstrap_tmpl.json", filepath.Join(istioDir, "tools", "packaging", "common", "envoy_bootstrap.json"), 0o644); err != nil {
		return nil, err
	}
	// Debian's programs, found where hack/prereqs.sh installs them.
	host, err := debianFiles(ctx)
	if err != nil {
		return nil, err
	}
	files = append(files, host...)
	for _, d := range []string{"etc/istio/proxy/", "var/lib/istio/data/", "etc/istio/pod/", "var/run/secrets/istio/", "var/run/secrets/workload-spiffe-uds/", "var/run/secrets/credential-uds/", "var/run/secrets/tokens/"} {
		files = append(files, imagebuild.File{Path: d, Mode: 0o755, UID: ProxyUID, GID: ProxyUID})
	}
	files = append(files,
		imagebuild.File{Path: "etc/passwd", Mode: 0o644, Data: fmt.Appendf(nil, "root:x:0:0:root:/root:/sbin/nologin\nistio-proxy:x:%d:%d:istio-proxy:/home/istio-proxy:/sbin/nologin\n", ProxyUID, ProxyUID)},
		imagebuild.File{Path: "etc/group", Mode: 0o644, Data: fmt.Appendf(nil, "root:x:0:\nistio-proxy:x:%d:\n", ProxyUID)},
		imagebuild.File{Path: "home/istio-proxy/", Mode: 0o755, UID: ProxyUID, GID: ProxyUID},
		imagebuild.File{Path: "tmp/", Mode: 0o1777},
		// Debian's merged /usr: the dynamic loader is /lib64/ld-linux-x86-64.so.2 in every ELF.
		imagebuild.File{Path: "bin", Link: "usr/bin"},
		imagebuild.File{Path: "sbin", Link: "usr/sbin"},
		imagebuild.File{Path: "lib", Link: "usr/lib"},
		imagebuild.File{Path: "lib64", Link: "usr/lib64"},
	)
	base, err := imagebuild.BaseLayer(time.Unix(0, 0))
	if err != nil {
		return nil, err
	}
	return imagebuild.Image(imagebuild.ImageSpec{
		Platform: v1.Platform{OS: "linux", Architecture: runtime.GOARCH},
		// The base's CA bundle; its /etc/passwd and /tmp are replaced by this layer's.
		Base:       base,
		Files:      files,
		Entrypoint: []string{"/usr/local/bin/pilot-agent"},
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		User:       fmt.Sprintf("%d:%d", ProxyUID, ProxyUID),
		Labels: map[string]string{
			"org.opencontainers.image.title":       "proxyv2 (wasme test image)",
			"org.opencontainers.image.description": "Istio's real pilot-agent with wasme's test proxy as /usr/local/bin/envoy: not Envoy",
		},
		Created: time.Unix(0, 0),
	})
}

// The iptables names istio-iptables may run (tools/istio-iptables/pkg/dependencies of the
// pinned Istio: the -nft variants first, then the plain names); all are xtables-nft-multi.
var iptablesNames = []string{
	"iptables", "iptables-save", "iptables-restore", "iptables-nft", "iptables-nft-save", "iptables-nft-restore",
	"ip6tables", "ip6tables-save", "ip6tables-restore", "ip6tables-nft", "ip6tables-nft-save", "ip6tables-nft-restore",
}

// debianFiles copies curl and xtables-nft-multi with their libraries, iptables' extension
// modules and the network databases they read.
func debianFiles(ctx context.Context) ([]imagebuild.File, error) {
	var missing []string
	curl, err := exec.LookPath("curl")
	if err != nil {
		missing = append(missing, "curl")
	}
	xt, err := filepath.EvalSymlinks("/usr/sbin/xtables-nft-multi")
	if err != nil {
		missing = append(missing, "iptables (xtables-nft-multi)")
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("proxyv2 image: this machine lacks %s (Debian packages; hack/prereqs.sh installs them as root)", strings.Join(missing, ", "))
	}
	extDir := "/usr/lib/" + multiarch() + "/xtables"
	exts, err := filepath.Glob(filepath.Join(extDir, "*.so"))
	if err != nil || len(exts) == 0 {
		return nil, fmt.Errorf("proxyv2 image: no iptables extension modules in %s", extDir)
	}
	out := map[string]imagebuild.File{}
	put := func(path, from string, mode int64) error {
		real, err := filepath.EvalSymlinks(from)
		if err != nil {
			return err
		}
		b, err := os.ReadFile(real)
		if err != nil {
			return err
		}
		out[path] = imagebuild.File{Path: path, Data: b, Mode: mode}
		return nil
	}
	elfs := append([]string{curl, xt}, exts...)
	for _, e := range elfs {
		libs, err := ldd(ctx, e)
		if err != nil {
			return nil, err
		}
		for _, l := range libs {
			if err := put(usrPath(l), l, 0o755); err != nil {
				return nil, fmt.Errorf("proxyv2 image: library %s of %s: %w", l, e, err)
			}
		}
	}
	if err := put("usr/bin/curl", curl, 0o755); err != nil {
		return nil, err
	}
	if err := put("usr/sbin/xtables-nft-multi", xt, 0o755); err != nil {
		return nil, err
	}
	for _, n := range iptablesNames {
		out["usr/sbin/"+n] = imagebuild.File{Path: "usr/sbin/" + n, Link: "xtables-nft-multi"}
	}
	for _, e := range exts {
		if err := put(usrPath(e), e, 0o644); err != nil {
			return nil, err
		}
	}
	for _, f := range []string{"/etc/protocols", "/etc/services"} {
		if err := put(strings.TrimPrefix(f, "/"), f, 0o644); err != nil {
			return nil, fmt.Errorf("proxyv2 image: %w (Debian's netbase; iptables reads protocol names from it)", err)
		}
	}
	names := make([]string, 0, len(out))
	for n := range out {
		names = append(names, n)
	}
	sort.Strings(names)
	files := make([]imagebuild.File, 0, len(names))
	for _, n := range names {
		files = append(files, out[n])
	}
	return files, nil
}

func multiarch() string {
	if runtime.GOARCH == "arm64" {
		return "aarch64-linux-gnu"
	}
	return "x86_64-linux-gnu"
}

// usrPath is where a library ldd printed goes in the image: under /usr (the image has Debian's
// /lib -> usr/lib links), by the name ldd printed (the soname), not the file it links to.
func usrPath(p string) string {
	p = strings.TrimPrefix(filepath.Clean(p), "/")
	if !strings.HasPrefix(p, "usr/") {
		p = "usr/" + p
	}
	return p
}

// ldd lists the shared objects an ELF file loads, the dynamic loader included.
func ldd(ctx context.Context, elf string) ([]string, error) {
	out, err := exec.CommandContext(ctx, "ldd", elf).CombinedOutput()
	if err != nil {
		if bytes.Contains(out, []byte("not a dynamic executable")) {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %w: %s", elf, err, out)
	}
	var libs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			libs = append(libs, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			libs = append(libs, f[0])
		case len(f) >= 3 && f[1] == "=>" && f[2] == "not":
			return nil, fmt.Errorf("ldd %s: %s is not found", elf, f[0])
		}
	}
	return libs, nil
}
