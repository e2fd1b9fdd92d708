package node

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"wasme.io/wasme/internal/imagebuild"
	"wasme.io/wasme/internal/testing/tools"
)

// IstioTag is the tag of the Istio images built here and pushed to the node's registry (pilot,
// and proxyv2): istioctl's global.tag.
const IstioTag = "wasme"

// IstioNamespace is where istioctl installs istiod and the ingress gateway.
const IstioNamespace = "istio-system"

// PilotImage is Istio's pilot image as Istio's own Dockerfile (pilot/docker/Dockerfile.pilot)
// lays it out, around the pinned pilot-discovery (hack/tools/build.sh istiod, a static build):
// /usr/local/bin/pilot-discovery as the entrypoint, user 1337:1337, on the base of the node's
// other images (CA certificates, /etc/passwd, /tmp) in place of Istio's distroless base. The
// chart's istiod Deployment runs it unchanged (it passes "discovery" and its flags as args).
func PilotImage(pilotDiscovery []byte) (v1.Image, error) {
	base, err := imagebuild.BaseLayer(time.Unix(0, 0))
	if err != nil {
		return nil, err
	}
	return imagebuild.Image(imagebuild.ImageSpec{
		Platform:   v1.Platform{OS: "linux", Architecture: runtime.GOARCH},
		Base:       base,
		Files:      []imagebuild.File{{Path: "usr/local/bin/pilot-discovery", Data: pilotDiscovery, Mode: 0o755}},
		Entrypoint: []string{"/usr/local/bin/pilot-discovery"},
		User:       "1337:1337",
		Created:    time.Unix(0, 0),
	})
}

// PushPilot builds the pilot image (PilotImage) and pushes it as pilot:IstioTag to the node's
// registry; it returns the reference the node pulls.
func (n *Node) PushPilot(ctx context.Context) (string, error) {
	bin, err := tools.Istiod(n.progress)
	if err != nil {
		return "", fmt.Errorf("the pilot-discovery build (hack/tools/build.sh istiod): %w", err)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return "", err
	}
	img, err := PilotImage(data)
	if err != nil {
		return "", err
	}
	pushed, err := imagebuild.PushImage(ctx, n.Registry.Host+"/pilot:"+IstioTag, img, true)
	if err != nil {
		return "", err
	}
	return n.NodeRef(pushed), nil
}

// IstioOptions change how InstallIstio installs Istio.
type IstioOptions struct {
	// Out receives istioctl's output (nil: kept for the error only).
	Out io.Writer
}

// IstioValues are the `istioctl install --set` values InstallIstio passes besides hub and tag,
// fitted to one small node of two shared cores:
//   - requests of a few millicores and tens of MiB instead of the chart's 500m/2 GiB for istiod
//     and 100m/128 MiB per proxy: the scheduler would otherwise refuse a handful of meshed pods
//     on two cores, and the test pods are idle;
//   - no HorizontalPodAutoscalers (the node runs no metrics-server, an HPA would only log that
//     it has no metrics), one replica of each;
//   - the ingress gateway's Service as ClusterIP: there is no load balancer to give a
//     LoadBalancer Service an address, and tests reach cluster IPs directly.
var IstioValues = []string{
	"values.pilot.autoscaleEnabled=false",
	"values.pilot.resources.requests.cpu=10m",
	"values.pilot.resources.requests.memory=100Mi",
	"values.global.proxy.resources.requests.cpu=10m",
	"values.global.proxy.resources.requests.memory=40Mi",
	"values.global.proxy.resources.limits.memory=256Mi",
	"values.gateways.istio-ingressgateway.autoscaleEnabled=false",
	"values.gateways.istio-ingressgateway.type=ClusterIP",
	"values.gateways.istio-ingressgateway.resources.requests.cpu=10m",
	"values.gateways.istio-ingressgateway.resources.requests.memory=40Mi",
}

// InstallIstio pushes the pilot and proxyv2 images (PushPilot, PushProxyV2) as IstioTag and
// runs `istioctl install` (the pinned istioctl, its embedded charts) of the default profile
// with hub and tag naming them, and IstioValues. istioctl returns once istiod and the ingress
// gateway (pilot-agent and the test proxy, Ready through pilot-agent's probe) are Ready; so
// does InstallIstio.
func (n *Node) InstallIstio(ctx context.Context, o IstioOptions) error {
	istioctl, err := tools.Istioctl(n.progress)
	if err != nil {
		return fmt.Errorf("the istioctl build (hack/tools/build.sh istioctl): %w", err)
	}
	if _, err := n.PushPilot(ctx); err != nil {
		return fmt.Errorf("pushing the pilot image: %w", err)
	}
	if _, err := n.PushProxyV2(ctx, IstioTag); err != nil {
		return fmt.Errorf("pushing the proxyv2 image: %w", err)
	}
	args := []string{"install", "--kubeconfig", n.Kubeconfig, "--skip-confirmation",
		"--set", "profile=default",
		"--set", "hub=" + n.RegistryHost, "--set", "tag=" + IstioTag,
		"--readiness-timeout", "5m"}
	for _, v := range IstioValues {
		args = append(args, "--set", v)
	}
	cmd := exec.CommandContext(ctx, istioctl, args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if o.Out != nil {
		cmd.Stdout, cmd.Stderr = io.MultiWriter(&out, o.Out), io.MultiWriter(&out, o.Out)
	}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("istioctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}
