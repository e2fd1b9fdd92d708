package localcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"wasme.io/wasme/internal/imagebuild"
	"wasme.io/wasme/internal/testing/netns"
	"wasme.io/wasme/internal/testing/tools"
)

// ProxyUID is the uid Istio's sidecar runs as; istio-iptables leaves its traffic alone.
const ProxyUID = 1337

// AgentOptions configure StartPilotAgent.
type AgentOptions struct {
	// Upstream is the application of the pod, served on the pod IP and Port in the namespace.
	Upstream http.Handler
	// Port is the application's port; BookinfoPort when zero.
	Port int
	// Dir holds the agent's working directory and log; it must be empty or missing. The
	// caller removes it.
	Dir string
	// NoIstiod: do not connect the agent to istiod until ConnectIstiod is called.
	NoIstiod bool
}

// Agent is the real pilot-agent running as one pod's sidecar, with wasme's test proxy as its
// envoy, in a network namespace of its own where istio-iptables (the real one, pilot-agent
// istio-iptables) redirects the pod's traffic, as in a pod.
type Agent struct {
	// NS is the pod's network namespace.
	NS *netns.NS
	// PodIP is the pod's IP (on the namespace's loopback, as the simulated pods' are).
	PodIP string
	// Dir is pilot-agent's working directory (its ./etc/istio/proxy, ./var/lib/istio ...).
	Dir string
	// LogPath holds pilot-agent's and the stand-in's output.
	LogPath string
	// Client sends requests from inside the namespace as root (so they are redirected as a
	// pod's application's own requests are).
	Client *http.Client

	cmd     *exec.Cmd
	istiod  string
	fwd     net.Listener
	app     net.Listener
	waitErr error
	done    chan struct{}
	mu      sync.Mutex
}

// StartPilotAgent starts pilot-agent for the Deployment's pod: the stand-in built from
// internal/testing/standin/envoy as its envoy, the bootstrap template of the pinned Istio, a
// plaintext connection to istiod (controlPlaneAuthPolicy NONE; istiod here has no CA) through
// 127.0.0.1:15010 in the namespace, and istio-iptables' REDIRECT rules as the injector's
// istio-init container sets them. Needs root, nsenter and iptables.
func (c *Cluster) StartPilotAgent(ctx context.Context, ns, deployment string, o AgentOptions) (*Agent, error) {
	if o.Upstream == nil || o.Dir == "" {
		return nil, errors.New("localcluster: AgentOptions.Upstream and Dir are required")
	}
	if o.Port == 0 {
		o.Port = BookinfoPort
	}
	for _, bin := range []string{"nsenter", "ip", "iptables-nft", "curl"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("the pilot-agent harness needs %s (util-linux, iproute2, iptables, curl; hack/prereqs.sh installs them): %w", bin, err)
		}
	}
	agentBin, err := tools.PilotAgent(c.progress)
	if err != nil {
		return nil, err
	}
	istioDir, err := tools.IstioDir()
	if err != nil {
		return nil, err
	}
	pod, err := c.WaitPod(ctx, ns, deployment)
	if err != nil {
		return nil, err
	}
	a := &Agent{PodIP: pod.Status.PodIP, Dir: filepath.Join(o.Dir, "root"), LogPath: filepath.Join(o.Dir, "pilot-agent.log"), istiod: c.Istiod.XDSAddr, done: make(chan struct{})}
	// The working directory as the image lays it out, writable by the proxy's uid.
	tmpl, err := os.ReadFile(filepath.Join(istioDir, "tools", "packaging", "common", "envoy_bootstrap.json"))
	if err != nil {
		return nil, err
	}
	for _, d := range []string{"etc/istio/proxy", "var/lib/istio/envoy", "var/lib/istio/data", "var/run/secrets/workload-spiffe-uds", "usr/local/bin"} {
		if err := os.MkdirAll(filepath.Join(a.Dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(a.Dir, "var/lib/istio/envoy/envoy_bootstrap_tmpl.json"), tmpl, 0o644); err != nil {
		return nil, err
	}
	// The binaries inside the directory, as in the image: the tool cache may not be readable
	// by the proxy's uid.
	agentData, err := os.ReadFile(agentBin)
	if err != nil {
		return nil, err
	}
	agentBin = filepath.Join(a.Dir, "usr/local/bin/pilot-agent")
	if err := os.WriteFile(agentBin, agentData, 0o755); err != nil {
		return nil, err
	}
	envoy := filepath.Join(a.Dir, "usr/local/bin/envoy")
	if err := imagebuild.GoBuild(ctx, tools.RepoRoot(), "./internal/testing/standin/envoy", "linux", runtime.GOARCH, "", envoy); err != nil {
		return nil, err
	}
	if err := chownTree(o.Dir, ProxyUID); err != nil {
		return nil, err
	}
	a.NS, err = netns.New(ctx, fmt.Sprintf("wasme-pa-%d-%s", os.Getpid(), strings.ReplaceAll(a.PodIP, ".", "-")))
	if err != nil {
		return nil, err
	}
	cleanup := func() { _ = a.NS.Close() }
	// A pod's eth0: istio-iptables wants a non-loopback address to tell IPv4 from IPv6. The
	// pod IP itself stays on loopback, as the simulated pods' are.
	if err := a.NS.AddLocalLink(ctx, "eth0", "10.254.10.1/32"); err != nil {
		cleanup()
		return nil, err
	}
	a.Client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: a.NS.DialContext, DisableKeepAlives: true}}
	a.app, err = a.NS.Listen("tcp", net.JoinHostPort(a.PodIP, fmt.Sprint(o.Port)))
	if err != nil {
		cleanup()
		return nil, err
	}
	go func() { _ = (&http.Server{Handler: o.Upstream, ReadHeaderTimeout: 10 * time.Second}).Serve(a.app) }()
	logf, err := os.Create(a.LogPath)
	if err != nil {
		cleanup()
		return nil, err
	}
	// istio-init: the injector's arguments with its defaults.
	ipt := a.NS.Command(ctx, -1, agentBin, "istio-iptables", "-p", "15001", "-z", "15006", "-u", fmt.Sprint(ProxyUID),
		"-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020", "--log_output_level=default:info")
	ipt.Stdout, ipt.Stderr = logf, logf
	if err := ipt.Run(); err != nil {
		_ = logf.Close()
		cleanup()
		b, _ := os.ReadFile(a.LogPath)
		return nil, fmt.Errorf("pilot-agent istio-iptables: %w: %s", err, strings.TrimSpace(string(b)))
	}
	if !o.NoIstiod {
		if err := a.ConnectIstiod(); err != nil {
			_ = logf.Close()
			cleanup()
			return nil, err
		}
	}
	proxyConfig, _ := json.Marshal(map[string]any{
		"discoveryAddress":         "127.0.0.1:15010",
		"controlPlaneAuthPolicy":   "NONE",
		"binaryPath":               envoy,
		"drainDuration":            "2s",
		"terminationDrainDuration": "3s",
	})
	labels, _ := json.Marshal(pod.Labels)
	cmd := a.NS.Command(ctx, ProxyUID, agentBin, "proxy", "sidecar", "--domain", ns+".svc.cluster.local",
		"--proxyLogLevel=info", "--log_output_level=default:info")
	cmd.Dir = a.Dir
	cmd.Env = []string{
		"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + a.Dir,
		"PROXY_CONFIG=" + string(proxyConfig),
		"POD_NAME=" + pod.Name, "POD_NAMESPACE=" + ns, "INSTANCE_IP=" + a.PodIP, "HOST_IP=127.0.0.1",
		"SERVICE_ACCOUNT=" + pod.Spec.ServiceAccountName,
		"ISTIO_META_CLUSTER_ID=Kubernetes", "ISTIO_META_WORKLOAD_NAME=" + deployment,
		"ISTIO_META_OWNER=kubernetes://apis/apps/v1/namespaces/" + ns + "/deployments/" + deployment,
		"ISTIO_META_INTERCEPTION_MODE=REDIRECT", "ISTIO_META_MESH_ID=cluster.local", "TRUST_DOMAIN=cluster.local",
		"ISTIO_META_POD_PORTS=[{\"containerPort\":" + fmt.Sprint(o.Port) + ",\"protocol\":\"TCP\"}]",
		"ISTIO_KUBE_APP_PROBERS={}", "ISTIO_META_APP_CONTAINERS=app",
		"ISTIO_META_ISTIO_VERSION=" + c.Istiod.Version + ".0",
		"ISTIO_METAJSON_LABELS=" + string(labels),
		"PILOT_CERT_PROVIDER=istiod", "CA_ADDR=127.0.0.1:15010",
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		a.closeNet()
		cleanup()
		return nil, err
	}
	a.cmd = cmd
	go func() {
		err := cmd.Wait()
		_ = logf.Close()
		a.mu.Lock()
		a.waitErr = err
		a.mu.Unlock()
		close(a.done)
	}()
	return a, nil
}

// ConnectIstiod lets the agent reach istiod (127.0.0.1:15010 in the namespace).
func (a *Agent) ConnectIstiod() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fwd != nil {
		return nil
	}
	l, err := a.NS.Listen("tcp", "127.0.0.1:15010")
	if err != nil {
		return err
	}
	a.fwd = l
	go netns.Forward(l, a.istiod, func(err error) {
		if f, ferr := os.OpenFile(a.LogPath, os.O_APPEND|os.O_WRONLY, 0); ferr == nil {
			_, _ = fmt.Fprintln(f, "harness:", err)
			_ = f.Close()
		}
	})
	return nil
}

// Signal sends sig to pilot-agent.
func (a *Agent) Signal(sig os.Signal) error { return a.cmd.Process.Signal(sig) }

// Wait waits for pilot-agent to exit (or ctx) and returns how it exited.
func (a *Agent) Wait(ctx context.Context) error {
	select {
	case <-a.done:
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.waitErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Exited reports whether pilot-agent has exited.
func (a *Agent) Exited() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// Log is pilot-agent's and the stand-in's output so far.
func (a *Agent) Log() string {
	b, _ := os.ReadFile(a.LogPath)
	return string(b)
}

// LogTail is the end of Log.
func (a *Agent) LogTail(lines int) string {
	l := strings.Split(strings.TrimRight(a.Log(), "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

func (a *Agent) closeNet() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fwd != nil {
		_ = a.fwd.Close()
	}
	if a.app != nil {
		_ = a.app.Close()
	}
}

// Stop kills pilot-agent and its envoy if still running and removes the namespace.
func (a *Agent) Stop() {
	if a.cmd != nil && !a.Exited() {
		_ = syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
		_ = a.Wait(context.Background())
	}
	a.closeNet()
	_ = a.NS.Close()
}

// Get sends GET url from inside the namespace and returns the response with its body read.
func (a *Agent) Get(ctx context.Context, url string) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := a.Client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close() //nolint:errcheck // read below
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp, body, err
}

// Exec runs name with args inside the namespace as uid (-1: root), as `kubectl exec` into the
// pod would, and returns its combined output.
func (a *Agent) Exec(ctx context.Context, uid int, name string, args ...string) (string, error) {
	out, err := a.NS.Command(ctx, uid, name, args...).CombinedOutput()
	return string(out), err
}

func chownTree(dir string, uid int) error {
	return filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, uid)
	})
}
