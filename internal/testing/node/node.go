// Package node runs a real Kubernetes node for tests: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, containerd (with Debian's runc and CNI plugins),
// kubelet, kube-proxy and CoreDNS as cluster DNS, all in a network namespace of their own, with a pause image built
// here and a registry on the host side of the namespace's veth that containerd pulls from.
//
// The components share the host's mount namespace (volume mounts must be visible to runc) and
// its cgroups; everything host-wide the node changes is recorded before it starts and undone by
// Stop, or by the next Start when a test died before stopping its node. One node runs per
// machine at a time: Start waits for a machine-wide lock.
//
// Settings that matter on CI machines: cgroup v1 needs failCgroupV1 false; without CAP_SYS_RESOURCE nothing may lower oom_score_adj, so containerd
// restricts it and kubelet and kube-proxy keep 0; kube-proxy starts once the Node exists and
// leaves conntrack limits alone; Service traffic is masqueraded so a pod reaches a Service
// backed by a pod on the same bridge without the host-wide bridge-nf-call-iptables.
package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"wasme.io/wasme/internal/imagebuild"
	"wasme.io/wasme/internal/testing/proc"
	"wasme.io/wasme/internal/testing/registry"
	"wasme.io/wasme/internal/testing/tools"
)

// Addresses of the node. They are private ranges chosen to be unlikely on a CI machine; the
// host routes the pod and service ranges through the veth so tests reach pods directly.
const (
	// HostIP is the host's end of the veth: the registry is reachable there.
	HostIP = "10.251.0.1"
	// IP is the node's InternalIP, where the API server listens (port 6443).
	IP = "10.251.0.2"
	// PodCIDR is the pod range of the node (the cluster range is ClusterCIDR).
	PodCIDR     = "10.252.0.0/24"
	ClusterCIDR = "10.252.0.0/16"
	// ServiceCIDR holds the Services' cluster IPs; the API server's is 10.253.0.1.
	ServiceCIDR = "10.253.0.0/24"
	// Name is the Node's name.
	Name = "wasme-node"
)

// Options change how Start runs the node.
type Options struct {
	// LogDir receives the components' logs; it is kept after Stop. Empty: a directory under
	// the node's own, removed with it.
	LogDir string
	// HostPaths are host directories the workloads of the test may create (hostPath volumes);
	// those that did not exist before the node are removed after it.
	HostPaths []string
	// Progress receives one line per bring-up step and tool builds on a first run (nil: discarded).
	Progress io.Writer
}

// Node is a running node and its control plane.
type Node struct {
	// Dir holds the node's files: certificates, configurations, containerd's and kubelet's roots.
	Dir string
	// LogDir holds the components' logs.
	LogDir string
	// Kubeconfig is an administrator's kubeconfig (system:masters).
	Kubeconfig string
	// Config reaches the API server as an administrator.
	Config *rest.Config
	// Clientset is a client for Config.
	Clientset kubernetes.Interface
	// Registry is the test registry on loopback; push to Registry.Host from the test.
	Registry *registry.Registry
	// RegistryHost is the registry as the node and its pods reach it (HostIP:port): image
	// references in pod specs use it.
	RegistryHost string
	// PauseImage is the sandbox image containerd runs for every pod.
	PauseImage string
	// Tools is the directory of the node's binaries (kubectl among them).
	Tools string
	// Started is when Start began.
	Started time.Time
	// Ready is when the Node became Ready and kube-proxy, the default ServiceAccount and
	// CoreDNS were there.
	Ready time.Time

	st         *state
	corednsBin string
	lockFile   *os.File
	procs      []*proc.Process
	fwd        net.Listener
	progress   io.Writer
	stopOnce   sync.Once
	stopErr    error
}

// Missing lists what this machine lacks to run a node, each with how to get it; empty when it
// has everything.
func Missing() []string {
	var m []string
	if runtime.GOOS != "linux" {
		return []string{"Linux (the node needs network namespaces, cgroups and overlayfs; this is " + runtime.GOOS + ")"}
	}
	if os.Geteuid() != 0 {
		m = append(m, "root: the node creates a network namespace, mounts and cgroups (run the tests as root, e.g. sudo -E make test)")
	}
	var pkgs []string
	for _, c := range []struct{ bin, pkg string }{
		{"runc", "runc"}, {"iptables", "iptables"}, {"conntrack", "conntrack"},
	} {
		if _, err := lookPath(c.bin); err != nil {
			pkgs = append(pkgs, c.pkg)
		}
	}
	for _, p := range []string{"bridge", "host-local", "portmap"} {
		if _, err := os.Stat(filepath.Join(cniBinDir, p)); err != nil {
			pkgs = append(pkgs, "containernetworking-plugins")
			break
		}
	}
	if len(pkgs) > 0 {
		m = append(m, fmt.Sprintf("Debian packages %s (run hack/prereqs.sh realnode as root, or: sudo apt-get install %s)",
			strings.Join(pkgs, " "), strings.Join(pkgs, " ")))
	}
	for _, c := range []struct{ bin, pkg string }{{"ip", "iproute2"}, {"nsenter", "util-linux"}} {
		if _, err := lookPath(c.bin); err != nil {
			m = append(m, fmt.Sprintf("%s (sudo apt-get install %s)", c.bin, c.pkg))
		}
	}
	if b, err := os.ReadFile("/proc/filesystems"); err != nil || !strings.Contains(string(b), "overlay") {
		m = append(m, "the overlay filesystem (modprobe overlay)")
	}
	if _, err := os.Stat("/sys/fs/cgroup"); err != nil {
		m = append(m, "cgroups mounted under /sys/fs/cgroup")
	}
	return m
}

const cniBinDir = "/usr/lib/cni"

func lookPath(bin string) (string, error) {
	if p, err := exec.LookPath(bin); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin"} {
		p := filepath.Join(d, bin)
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", bin)
}

// Start brings a node up and returns once the Node is Ready, kube-proxy runs, the default
// ServiceAccount exists and CoreDNS answers behind the kube-dns Service. On error nothing of
// it is left.
func Start(ctx context.Context, o Options) (n *Node, err error) {
	if m := Missing(); len(m) > 0 {
		return nil, fmt.Errorf("this machine cannot run a real node; missing: %s", strings.Join(m, "; "))
	}
	progress := o.Progress
	if progress == nil {
		progress = io.Discard
	}
	toolsDir, err := tools.NodeTools(progress)
	if err != nil {
		return nil, fmt.Errorf("the node tools (hack/tools/build.sh --node): %w", err)
	}
	// Built before the lock is taken: a first build must not hold up another test's node.
	corednsBin, err := tools.CoreDNS(progress)
	if err != nil {
		return nil, fmt.Errorf("the CoreDNS build (hack/tools/build.sh coredns): %w", err)
	}
	lf, err := lock()
	if err != nil {
		return nil, fmt.Errorf("the node lock %s: %w", lockFile, err)
	}
	n = &Node{Tools: toolsDir, corednsBin: corednsBin, lockFile: lf, progress: progress, Started: time.Now()}
	if err := cleanupLeftovers(); err != nil {
		_ = lf.Close() // releases the node lock
		return nil, fmt.Errorf("cleaning up a node a previous test left behind: %w", err)
	}
	dir, err := os.MkdirTemp("", "wasme-node-")
	if err != nil {
		_ = lf.Close() // releases the node lock
		return nil, err
	}
	n.Dir = dir
	n.LogDir = o.LogDir
	if n.LogDir == "" {
		n.LogDir = filepath.Join(dir, "logs")
	}
	if n.st, err = snapshot(dir, o.HostPaths); err != nil {
		os.RemoveAll(dir)
		_ = lf.Close() // releases the node lock
		return nil, err
	}
	if err := n.st.save(); err != nil {
		os.RemoveAll(dir)
		_ = lf.Close() // releases the node lock
		return nil, err
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w%s", err, n.logTails())
			if serr := n.Stop(); serr != nil {
				err = errors.Join(err, fmt.Errorf("and stopping it: %w", serr))
			}
			n = nil
		}
	}()
	if err := os.MkdirAll(n.LogDir, 0o755); err != nil {
		return n, err
	}
	steps := []struct {
		name string
		f    func(context.Context) error
	}{
		{"network namespace " + netnsName + " with veth " + hostVeth + " (" + HostIP + ") <-> " + nodeVeth + " (" + IP + ")", n.network},
		{"registry and pause image", n.registry},
		{"certificates and configuration", n.configure},
		{"etcd, kube-apiserver", n.controlPlane},
		{"kube-controller-manager, kube-scheduler", n.controllers},
		{"containerd, kubelet", n.kubelet},
		{"kube-proxy", n.kubeProxy},
		{"default ServiceAccount", n.defaultSA},
		{"cluster DNS (CoreDNS, kube-dns Service " + DNSServiceIP + ")", n.dns},
	}
	for _, s := range steps {
		fmt.Fprintf(progress, ">> node: %s (%.1fs)\n", s.name, time.Since(n.Started).Seconds())
		if err := s.f(ctx); err != nil {
			return n, fmt.Errorf("node: %s: %w", s.name, err)
		}
	}
	n.Ready = time.Now()
	fmt.Fprintf(progress, ">> node: ready after %.1fs\n", n.Ready.Sub(n.Started).Seconds())
	return n, nil
}

func (n *Node) path(p ...string) string { return filepath.Join(append([]string{n.Dir}, p...)...) }

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// inNetns runs a command in the node's network namespace.
func inNetns(args ...string) error {
	return run("ip", append([]string{"netns", "exec", netnsName}, args...)...)
}

func (n *Node) network(context.Context) error {
	cmds := [][]string{
		{"netns", "add", netnsName},
		{"link", "add", hostVeth, "type", "veth", "peer", "name", nodeVeth},
		{"link", "set", nodeVeth, "netns", netnsName},
		{"addr", "add", HostIP + "/24", "dev", hostVeth},
		{"link", "set", hostVeth, "up"},
		{"-n", netnsName, "link", "set", "lo", "up"},
		{"-n", netnsName, "addr", "add", IP + "/24", "dev", nodeVeth},
		{"-n", netnsName, "link", "set", nodeVeth, "up"},
		{"-n", netnsName, "route", "add", "default", "via", HostIP},
		{"route", "add", ClusterCIDR, "via", IP, "dev", hostVeth},
		{"route", "add", ServiceCIDR, "via", IP, "dev", hostVeth},
	}
	for _, c := range cmds {
		if err := run("ip", c...); err != nil {
			return err
		}
	}
	// Forwarding inside the namespace only (per namespace): the pods' bridge is routed there.
	return inNetns("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
}

// registry starts the test registry on loopback and a forwarder on the host end of the veth,
// the only host address the node's namespace reaches, then pushes the pause image.
func (n *Node) registry(ctx context.Context) error {
	r, err := registry.Start(ctx, registry.Options{Dir: n.path("registry"), Progress: n.progress})
	if err != nil {
		return err
	}
	n.Registry = r
	l, err := net.Listen("tcp", HostIP+":0")
	if err != nil {
		return err
	}
	n.fwd = l
	n.RegistryHost = l.Addr().String()
	go forward(l, r.Host)

	bin := n.path("build", "pause")
	if err := imagebuild.GoBuild(ctx, tools.RepoRoot(), "./internal/testing/node/pause", "linux", runtime.GOARCH, "", bin); err != nil {
		return err
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	img, err := ImageOf("pause", data, nil)
	if err != nil {
		return err
	}
	if _, err := imagebuild.PushImage(ctx, r.Host+"/pause:wasme", img, true); err != nil {
		return err
	}
	n.PauseImage = n.RegistryHost + "/pause:wasme"
	return nil
}

// forward copies connections on l to addr until l is closed.
func forward(l net.Listener, addr string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			u, err := net.Dial("tcp", addr)
			if err != nil {
				return
			}
			defer u.Close()
			done := make(chan struct{}, 2)
			go func() { _, _ = io.Copy(u, c); done <- struct{}{} }()
			go func() { _, _ = io.Copy(c, u); done <- struct{}{} }()
			<-done
		}()
	}
}

// start runs bin from the node tools in the node's network namespace.
func (n *Node) start(name, bin string, args ...string) (*proc.Process, error) {
	nsenter, err := lookPath("nsenter")
	if err != nil {
		return nil, err
	}
	full := append([]string{"--net=/run/netns/" + netnsName, "--", bin}, args...)
	p, err := proc.Start(name, nsenter, full, filepath.Join(n.LogDir, name+".log"), proc.Options{Dir: n.Dir})
	if err != nil {
		return nil, err
	}
	n.procs = append(n.procs, p)
	return p, nil
}

func (n *Node) tool(name string) string { return filepath.Join(n.Tools, name) }

// Kubectl runs the pinned kubectl as the administrator and returns its combined output.
func (n *Node) Kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, n.tool("kubectl"), append([]string{"--kubeconfig", n.Kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// waitFor polls f every 200ms until it returns true, an error, ctx ends or timeout passes;
// what names the awaited state in the error.
func waitFor(ctx context.Context, timeout time.Duration, what string, f func(context.Context) (bool, error), exited ...*proc.Process) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		ok, err := f(ctx)
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		for _, p := range exited {
			select {
			case <-p.Exited():
				return fmt.Errorf("%s exited (%w) while waiting for %s", p.Name, p.Err(), what)
			default:
			}
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("waiting for %s: %w (last: %w)", what, ctx.Err(), last)
			}
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (n *Node) controlPlane(ctx context.Context) error {
	if _, err := n.start("etcd", n.tool("etcd"),
		"--data-dir", n.path("etcd"),
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "default=http://127.0.0.1:2380", "--log-level", "warn",
		"--unsafe-no-fsync"); err != nil {
		return err
	}
	pki := n.path("pki")
	api, err := n.start("kube-apiserver", n.tool("kube-apiserver"),
		"--etcd-servers", "http://127.0.0.1:2379",
		"--bind-address", "0.0.0.0", "--secure-port", "6443", "--advertise-address", IP,
		"--tls-cert-file", pki+"/apiserver.crt", "--tls-private-key-file", pki+"/apiserver.key",
		"--client-ca-file", pki+"/ca.crt",
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", pki+"/sa.pub", "--service-account-signing-key-file", pki+"/sa.key",
		"--service-cluster-ip-range", ServiceCIDR,
		"--authorization-mode", "Node,RBAC", "--enable-admission-plugins", "NodeRestriction",
		"--kubelet-client-certificate", pki+"/apiserver-kubelet-client.crt",
		"--kubelet-client-key", pki+"/apiserver-kubelet-client.key",
		"--kubelet-preferred-address-types", "InternalIP,Hostname",
		"--allow-privileged=true", "--profiling=false")
	if err != nil {
		return err
	}
	cs := kubernetes.NewForConfigOrDie(n.Config)
	return waitFor(ctx, 2*time.Minute, "the API server's /readyz", func(ctx context.Context) (bool, error) {
		b, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil && string(b) == "ok", err
	}, api)
}

func (n *Node) controllers(context.Context) error {
	pki := n.path("pki")
	if _, err := n.start("kube-controller-manager", n.tool("kube-controller-manager"),
		"--kubeconfig", n.path("controller-manager.kubeconfig"),
		"--authentication-kubeconfig", n.path("controller-manager.kubeconfig"),
		"--authorization-kubeconfig", n.path("controller-manager.kubeconfig"),
		"--bind-address", "127.0.0.1",
		"--service-account-private-key-file", pki+"/sa.key", "--root-ca-file", pki+"/ca.crt",
		"--cluster-signing-cert-file", pki+"/ca.crt", "--cluster-signing-key-file", pki+"/ca.key",
		"--use-service-account-credentials", "--allocate-node-cidrs",
		"--cluster-cidr", ClusterCIDR, "--node-cidr-mask-size", "24",
		"--service-cluster-ip-range", ServiceCIDR, "--leader-elect=false"); err != nil {
		return err
	}
	_, err := n.start("kube-scheduler", n.tool("kube-scheduler"),
		"--kubeconfig", n.path("scheduler.kubeconfig"),
		"--authentication-kubeconfig", n.path("scheduler.kubeconfig"),
		"--authorization-kubeconfig", n.path("scheduler.kubeconfig"),
		"--bind-address", "127.0.0.1", "--leader-elect=false")
	return err
}

func (n *Node) kubelet(ctx context.Context) error {
	ctrd, err := n.start("containerd", n.tool("containerd"), "--config", n.path("containerd", "config.toml"))
	if err != nil {
		return err
	}
	sock := n.path("containerd", "containerd.sock")
	if err := waitFor(ctx, time.Minute, "containerd's socket", func(context.Context) (bool, error) {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil, err
	}, ctrd); err != nil {
		return err
	}
	kl, err := n.start("kubelet", n.tool("kubelet"),
		"--config", n.path("kubelet", "config.yaml"),
		"--kubeconfig", n.path("kubelet.kubeconfig"),
		"--root-dir", n.path("kubelet", "root"),
		"--cert-dir", n.path("kubelet", "pki"),
		"--hostname-override", Name, "--node-ip", IP)
	if err != nil {
		return err
	}
	return waitFor(ctx, 2*time.Minute, "Node "+Name+" Ready", func(ctx context.Context) (bool, error) {
		node, err := n.Clientset.CoreV1().Nodes().Get(ctx, Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady {
				return c.Status == corev1.ConditionTrue, fmt.Errorf("condition Ready=%s: %s", c.Status, c.Message)
			}
		}
		return false, nil
	}, kl, ctrd)
}

func (n *Node) kubeProxy(ctx context.Context) error {
	kp, err := n.start("kube-proxy", n.tool("kube-proxy"), "--config", n.path("kube-proxy.yaml"))
	if err != nil {
		return err
	}
	// kube-proxy is up once it has written its Service rules: the API server's Service is
	// the first.
	return waitFor(ctx, time.Minute, "kube-proxy's rules for the kubernetes Service", func(context.Context) (bool, error) {
		out, err := exec.Command("ip", "netns", "exec", netnsName, "iptables-save", "-t", "nat").CombinedOutput()
		return err == nil && strings.Contains(string(out), "default/kubernetes:https"), err
	}, kp)
}

func (n *Node) defaultSA(ctx context.Context) error {
	return waitFor(ctx, time.Minute, "the default ServiceAccount", func(ctx context.Context) (bool, error) {
		_, err := n.Clientset.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	})
}

// Stop stops the components by pid and removes everything the node made (see teardown). It
// is safe to call more than once.
func (n *Node) Stop() error {
	if n == nil {
		return nil
	}
	n.stopOnce.Do(func() {
		// Kubelet and the controllers first, so nothing restarts containers; containerd and
		// the control plane after; what a component leaves behind teardown removes.
		for i := len(n.procs) - 1; i >= 0; i-- {
			n.procs[i].Stop()
		}
		if n.fwd != nil {
			n.fwd.Close()
		}
		if n.Registry != nil {
			n.Registry.Stop()
		}
		if n.st != nil {
			n.stopErr = teardown(n.st)
		}
		if n.lockFile != nil {
			_ = n.lockFile.Close() // releases the node lock
		}
	})
	return n.stopErr
}

// Memory is the resident memory of every process of the node: the components, the shims and
// the containers.
func (n *Node) Memory() (int64, error) {
	var total int64
	for _, pid := range nodePids(nsInode(filepath.Join("/run/netns", netnsName)), kubepodsCgroups()) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				total += kb * 1024
			}
		}
	}
	return total, nil
}

// logTails is the last lines of each component's log, for an error.
func (n *Node) logTails() string {
	var sb strings.Builder
	for _, p := range n.procs {
		fmt.Fprintf(&sb, "\n--- %s log (last 15 lines):\n%s", p.Name, p.LogTail(15))
	}
	return sb.String()
}

// LogTails is the last lines of each component's log, for a failing test's message.
func (n *Node) LogTails() string { return n.logTails() }

// restConfig loads a kubeconfig file.
func restConfig(path string) (*rest.Config, error) {
	return clientcmd.BuildConfigFromFlags("", path)
}
