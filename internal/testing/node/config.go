package node

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"k8s.io/client-go/kubernetes"

	"wasme.io/wasme/internal/imagebuild"
	"wasme.io/wasme/internal/testing/tools"
)

// ImageOf is a single-platform image (this machine's architecture) whose entrypoint is the
// static binary data, on the base of `make image` (CA certificates, the nonroot user).
func ImageOf(name string, data []byte, args []string) (v1.Image, error) {
	base, err := imagebuild.BaseLayer(time.Unix(0, 0))
	if err != nil {
		return nil, err
	}
	return imagebuild.Image(imagebuild.ImageSpec{
		Platform:   v1.Platform{OS: "linux", Architecture: runtime.GOARCH},
		Base:       base,
		Files:      []imagebuild.File{{Path: name, Data: data, Mode: 0o755}},
		Entrypoint: []string{"/" + name}, Args: args,
		Created: time.Unix(0, 0),
	})
}

// configure writes the certificates, kubeconfigs and the configuration of containerd, CNI,
// kubelet and kube-proxy.
func (n *Node) configure(context.Context) error {
	p, err := newPKI(n.path("pki"))
	if err != nil {
		return err
	}
	if _, _, err := p.issue("apiserver", "kube-apiserver", nil,
		[]net.IP{net.ParseIP(IP), net.ParseIP("10.253.0.1"), net.ParseIP("127.0.0.1")},
		[]string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"}); err != nil {
		return err
	}
	if _, _, err := p.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil, nil); err != nil {
		return err
	}
	if _, _, err := p.serviceAccountKey(); err != nil {
		return err
	}
	server := "https://" + IP + ":6443"
	for _, c := range []struct{ file, cn, group string }{
		{"admin", "wasme-test-admin", "system:masters"},
		{"controller-manager", "system:kube-controller-manager", ""},
		{"scheduler", "system:kube-scheduler", ""},
		{"kubelet", "system:node:" + Name, "system:nodes"},
		{"kube-proxy", "system:kube-proxy", ""},
	} {
		var groups []string
		if c.group != "" {
			groups = []string{c.group}
		}
		cert, key, err := p.issue(c.file, c.cn, groups, nil, nil)
		if err != nil {
			return err
		}
		if err := kubeconfig(n.path(c.file+".kubeconfig"), server, p.CAFile, cert, key); err != nil {
			return err
		}
	}
	n.Kubeconfig = n.path("admin.kubeconfig")
	if n.Config, err = restConfig(n.Kubeconfig); err != nil {
		return err
	}
	n.Config.QPS, n.Config.Burst = 50, 100
	if n.Clientset, err = kubernetes.NewForConfig(n.Config); err != nil {
		return err
	}

	runc, err := lookPath("runc")
	if err != nil {
		return err
	}
	files := map[string]string{
		"containerd/config.toml": fmt.Sprintf(containerdConfig, n.Dir, n.Dir, n.Dir, n.Dir, n.Dir, n.PauseImage, n.Dir, runc, n.Dir, cniBinDir, n.Dir),
		"containerd/certs.d/" + n.RegistryHost + "/hosts.toml": fmt.Sprintf(
			"server = \"http://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", n.RegistryHost, n.RegistryHost),
		"cni/net.d/10-wasme.conflist": fmt.Sprintf(cniConfig, PodCIDR, n.path("cni", "ipam")),
		"kubelet/config.yaml":         fmt.Sprintf(kubeletConfig, IP, n.path("containerd", "containerd.sock"), n.path("pods-logs"), n.path("pki", "ca.crt")),
		"kube-proxy.yaml":             fmt.Sprintf(kubeProxyConfig, n.path("kube-proxy.kubeconfig"), Name, ClusterCIDR),
	}
	for name, content := range files {
		path := n.path(name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// containerd 2.x, configuration version 3. Every path is under the node's directory; the
// shims' sockets under /run/containerd/s cannot be moved (teardown removes them).
const containerdConfig = `version = 3
root = "%s/containerd/root"
state = "%s/containerd/state"
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "%s/containerd/containerd.sock"

[ttrpc]
  address = "%s/containerd/containerd.sock.ttrpc"

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = "%s/containerd/opt"

  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    use_local_image_pull = true
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "%s"
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = "%s/containerd/certs.d"

  [plugins.'io.containerd.cri.v1.runtime']
    # Without CAP_SYS_RESOURCE nothing can lower oom_score_adj; runc would fail every sandbox.
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "%s"
          Root = "%s/runc"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["%s"]
      conf_dir = "%s/cni/net.d"

  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = "127.0.0.1"
`

// A bridge in the node's namespace; containerd adds the loopback interface itself.
const cniConfig = `{
  "cniVersion": "1.0.0",
  "name": "wasme-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "wnbr0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "%s"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "%s"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`

const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %s
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
containerRuntimeEndpoint: unix://%s
podLogsDir: %s
cgroupDriver: cgroupfs
# cgroup v1 is deprecated in Kubernetes 1.37 but still supported when asked for.
failCgroupV1: false
# Without CAP_SYS_RESOURCE kubelet cannot lower its own oom_score_adj.
oomScoreAdj: 0
failSwapOn: false
serializeImagePulls: false
# CoreDNS of dns.go, started with the node.
clusterDomain: ` + ClusterDomain + `
clusterDNS: [` + DNSServiceIP + `]
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %s}
authorization:
  mode: Webhook
# A shared CI disk may be fuller than kubelet's defaults allow; the tests' pods are small.
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%%
  nodefs.inodesFree: 1%%
  imagefs.available: 1%%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
`

const kubeProxyConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
hostnameOverride: %s
mode: iptables
clusterCIDR: %s
bindAddress: 0.0.0.0
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
oomScoreAdj: 0
iptables:
  # A pod reaches a Service backed by a pod on the same bridge without the host-wide
  # bridge-nf-call-iptables.
  masqueradeAll: true
conntrack:
  # Leave the host-wide nf_conntrack_max alone.
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`

// PushProgram builds the Go main package pkg (relative to the repository root) for this
// machine, pushes it as repo:tag to the test registry and returns the reference the node pulls
// (RegistryHost/repo@sha256:...).
func (n *Node) PushProgram(ctx context.Context, pkg, repo string, args []string) (string, error) {
	name := filepath.Base(pkg)
	bin := n.path("build", repo, name)
	if err := imagebuild.GoBuild(ctx, tools.RepoRoot(), pkg, "linux", runtime.GOARCH, "", bin); err != nil {
		return "", err
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return "", err
	}
	img, err := ImageOf(name, data, args)
	if err != nil {
		return "", err
	}
	pushed, err := imagebuild.PushImage(ctx, n.Registry.Host+"/"+repo+":test", img, true)
	if err != nil {
		return "", err
	}
	return n.NodeRef(pushed), nil
}

// NodeRef rewrites a reference to the test registry as the node reaches it.
func (n *Node) NodeRef(ref string) string {
	if rest, ok := strings.CutPrefix(ref, n.Registry.Host+"/"); ok {
		return n.RegistryHost + "/" + rest
	}
	return ref
}
