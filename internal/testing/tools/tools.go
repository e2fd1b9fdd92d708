// Package tools finds this repository and the pinned tools that hack/tools/build.sh builds
// from their Go modules (etcd, kube-apiserver, istiod, the distribution registry, oras, ...).
// Every harness asks here, so a tool's location and its environment override are defined once.
package tools

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Environment variables that point the harness at prebuilt tools. The Makefile sets them, so
// that `go test` never builds a tool inside a test's timeout; when one is unset the tool is
// built (once per pin, cached) on first use.
const (
	// AssetsEnv is envtest's directory holding etcd and kube-apiserver.
	AssetsEnv = "KUBEBUILDER_ASSETS"
	// IstiodEnv names the pilot-discovery binary (hack/tools/build.sh istiod).
	IstiodEnv = "WASME_ISTIOD"
	// RegistryEnv names the OCI registry binary (hack/tools/build.sh registry: the CNCF
	// distribution registry).
	RegistryEnv = "WASME_TEST_REGISTRY"
	// HelmEnv names the helm binary (hack/tools/build.sh helm).
	HelmEnv = "WASME_HELM"
	// NodeToolsEnv is the directory of the real node's binaries (hack/tools/build.sh --node:
	// etcd, kube-apiserver, kubelet, kube-controller-manager, kube-scheduler, kube-proxy,
	// kubectl, containerd and its runc shim).
	NodeToolsEnv = "WASME_NODE_TOOLS"
	// CosignEnv names the cosign binary (hack/tools/build.sh cosign), for the signature
	// interoperability tests.
	CosignEnv = "WASME_COSIGN"
	// PilotAgentEnv names the pilot-agent binary (hack/tools/build.sh pilot-agent), which the
	// proxyv2 test image and the pilot-agent tests run.
	PilotAgentEnv = "WASME_PILOT_AGENT"
	// CoreDNSEnv names the CoreDNS binary (hack/tools/build.sh coredns), the real node's
	// cluster DNS.
	CoreDNSEnv = "WASME_COREDNS"
	// IstioctlEnv names the istioctl binary (hack/tools/build.sh istioctl), which installs
	// Istio on the real node.
	IstioctlEnv = "WASME_ISTIOCTL"
)

// RepoRoot is the root of this repository (the directory holding the main go.mod).
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", "..", ".."))
}

// Build runs hack/tools/build.sh with args and returns the path it prints. The script's
// progress (">> building istiod ...") goes to progress (nil: discarded), so a first run on a
// fresh machine shows why it takes minutes.
func Build(progress io.Writer, args ...string) (string, error) {
	if progress == nil {
		progress = io.Discard
	}
	cmd := exec.Command(filepath.Join(RepoRoot(), "hack", "tools", "build.sh"), args...)
	var out, errOut bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = io.MultiWriter(progress, &errOut)
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("hack/tools/build.sh %s: %w: %s", strings.Join(args, " "), err, lastLine(errOut.String()))
	}
	p := strings.TrimSpace(out.String())
	if p == "" {
		return "", fmt.Errorf("hack/tools/build.sh %s printed nothing", strings.Join(args, " "))
	}
	return p, nil
}

// FromEnv returns the path in the environment variable env, or else builds tool and sets env
// to its path for this process (and so for the children it starts).
func FromEnv(progress io.Writer, env, tool string) (string, error) {
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", env, p, err)
		}
		return p, nil
	}
	p, err := Build(progress, tool)
	if err != nil {
		return "", err
	}
	return p, os.Setenv(env, p)
}

// Registry is the pinned distribution registry binary ($WASME_TEST_REGISTRY or a build).
func Registry(progress io.Writer) (string, error) { return FromEnv(progress, RegistryEnv, "registry") }

// Cosign is the pinned cosign CLI ($WASME_COSIGN or a build).
func Cosign(progress io.Writer) (string, error) { return FromEnv(progress, CosignEnv, "cosign") }

// Helm is the pinned helm binary ($WASME_HELM or a build).
func Helm(progress io.Writer) (string, error) { return FromEnv(progress, HelmEnv, "helm") }

// Istiod is the pinned pilot-discovery binary ($WASME_ISTIOD or a build).
func Istiod(progress io.Writer) (string, error) { return FromEnv(progress, IstiodEnv, "istiod") }

// PilotAgent is the pinned pilot-agent binary ($WASME_PILOT_AGENT or a build).
func PilotAgent(progress io.Writer) (string, error) {
	return FromEnv(progress, PilotAgentEnv, "pilot-agent")
}

// Assets is envtest's directory of etcd and kube-apiserver ($KUBEBUILDER_ASSETS or a build).
func Assets(progress io.Writer) (string, error) { return FromEnv(progress, AssetsEnv, "--assets") }

// NodeTools is the directory of the real node's binaries ($WASME_NODE_TOOLS or a build).
func NodeTools(progress io.Writer) (string, error) { return FromEnv(progress, NodeToolsEnv, "--node") }

// CoreDNS is the pinned CoreDNS binary ($WASME_COREDNS or a build).
func CoreDNS(progress io.Writer) (string, error) { return FromEnv(progress, CoreDNSEnv, "coredns") }

// Istioctl is the pinned istioctl binary ($WASME_ISTIOCTL or a build).
func Istioctl(progress io.Writer) (string, error) { return FromEnv(progress, IstioctlEnv, "istioctl") }

// IstioDir is the source directory of the pinned istio.io/istio module (downloaded into the
// module cache if needed).
func IstioDir() (string, error) { return Build(nil, "--istio-dir") }

// IstioVersion is the version of the pinned istio.io/istio module (its VERSION file, e.g.
// "1.31"), which is what the istiod we run is.
func IstioVersion() (string, error) {
	root, err := IstioDir()
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(filepath.Join(root, "VERSION"))
	if err != nil {
		return "", fmt.Errorf("reading the istio module's VERSION: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
