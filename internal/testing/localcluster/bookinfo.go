package localcluster

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/testing/xdsproxy"
	"wasme.io/wasme/internal/wasmhost"
)

// BookinfoNamespace is where the seed runs Bookinfo.
const BookinfoNamespace = "bookinfo"

// BookinfoPort is the port every Bookinfo service listens on.
const BookinfoPort = 9080

// bookinfoApps are the seed's two workloads (details-v1 and productpage-v1).
var bookinfoApps = []string{"details", "productpage"}

// DeployBookinfo creates namespace bookinfo (istio-injection=enabled) with the details-v1 and
// productpage-v1 Deployments, their Services and ServiceAccounts, as Istio's
// samples/bookinfo does, and waits until their Pods run.
func (c *Cluster) DeployBookinfo(ctx context.Context) error {
	c.step("deploying Bookinfo (details-v1, productpage-v1) in namespace bookinfo")
	if err := c.ensureNamespace(ctx, BookinfoNamespace, map[string]string{"istio-injection": "enabled"}); err != nil {
		return err
	}
	for _, app := range bookinfoApps {
		sa := "bookinfo-" + app
		labels := map[string]string{"app": app, "version": "v1"}
		objs := []client.Object{
			&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: BookinfoNamespace, Name: sa, Labels: map[string]string{"account": app}}},
			&corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Namespace: BookinfoNamespace, Name: app, Labels: map[string]string{"app": app, "service": app}},
				Spec: corev1.ServiceSpec{
					Selector: map[string]string{"app": app},
					// The port name tells istiod the protocol: HTTP, so the inbound chain has an
					// HTTP connection manager for the Wasm filter to go into.
					Ports: []corev1.ServicePort{{Name: "http", Port: BookinfoPort, TargetPort: intstr.FromInt32(BookinfoPort)}},
				},
			},
			&appsv1.Deployment{
				ObjectMeta: metav1.ObjectMeta{Namespace: BookinfoNamespace, Name: app + "-v1", Labels: labels},
				Spec: appsv1.DeploymentSpec{
					Replicas: &[]int32{1}[0],
					Selector: &metav1.LabelSelector{MatchLabels: labels},
					Template: corev1.PodTemplateSpec{
						ObjectMeta: metav1.ObjectMeta{Labels: labels},
						Spec: corev1.PodSpec{
							ServiceAccountName: sa,
							Containers: []corev1.Container{{
								Name: app, Image: "istio/examples-bookinfo-" + app + "-v1:1.20.2",
								Ports: []corev1.ContainerPort{{ContainerPort: BookinfoPort}},
							}},
						},
					},
				},
			},
		}
		for _, o := range objs {
			if err := c.create(ctx, o); err != nil {
				return err
			}
		}
	}
	for _, app := range bookinfoApps {
		if _, err := c.WaitPod(ctx, BookinfoNamespace, app+"-v1"); err != nil {
			return err
		}
	}
	return nil
}

// WaitPod waits for the running Pod of a Deployment and returns it.
func (c *Cluster) WaitPod(ctx context.Context, ns, deployment string) (*corev1.Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		var pods corev1.PodList
		err := c.Client.List(ctx, &pods, client.InNamespace(ns), client.MatchingLabels{podLabel: deployment})
		if err == nil {
			for i := range pods.Items {
				if pods.Items[i].Status.PodIP != "" {
					return &pods.Items[i], nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no running pod for %s/%s: %w (pod sync errors: %v)", ns, deployment, ctx.Err(), c.kubelet.errors())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// SidecarOptions configure StartSidecar.
type SidecarOptions struct {
	// Upstream is the application the sidecar fronts.
	Upstream http.Handler
	// Port is the inbound port whose HTTP chain runs; BookinfoPort when zero.
	Port uint32
	// Log receives the proxy's and filters' log lines; nil discards them.
	Log *slog.Logger
	// CacheDir, when set, is read for modules instead of the pod's node's cache directory:
	// a directory without the module stands for a node whose cache lacks it.
	CacheDir string
}

// moduleCache is the compiled-module cache all sidecars of this cluster share: compiling a
// Go-built module takes seconds on a small machine, and every test starts a fresh sidecar.
func (c *Cluster) moduleCache() *wasmhost.Cache {
	c.cacheOnce.Do(func() {
		c.wasmCache = wasmhost.NewCache()
		c.stops = append(c.stops, func() { _ = c.wasmCache.Close(context.Background()) })
	})
	return c.wasmCache
}

// StartSidecar starts a test proxy (xdsproxy) as the sidecar of the Deployment's pod: it
// connects to istiod as that pod, listens on the pod's loopback IP and reads modules from the
// cache directory of the pod's node, where /var/local/lib/wasme-cache points.
func (c *Cluster) StartSidecar(ctx context.Context, ns, deployment string, o SidecarOptions) (*xdsproxy.Proxy, error) {
	pod, err := c.WaitPod(ctx, ns, deployment)
	if err != nil {
		return nil, err
	}
	node := c.Node(pod.Spec.NodeName)
	if node == nil {
		return nil, fmt.Errorf("pod %s/%s is on node %q, which is not simulated here", ns, pod.Name, pod.Spec.NodeName)
	}
	if o.Port == 0 {
		o.Port = BookinfoPort
	}
	cacheDir := node.CacheDir
	if o.CacheDir != "" {
		cacheDir = o.CacheDir
	}
	labels := map[string]string{}
	for k, v := range pod.Labels {
		if k != podLabel {
			labels[k] = v
		}
	}
	return xdsproxy.Start(ctx, xdsproxy.Options{
		XDSAddr: c.Istiod.XDSAddr,
		Identity: xdsproxy.Identity{
			PodName: pod.Name, Namespace: ns, PodIP: pod.Status.PodIP, Labels: labels,
			WorkloadName: deployment, ServiceAccount: pod.Spec.ServiceAccountName,
			IstioVersion: c.Istiod.Version + ".0",
		},
		Port:     o.Port,
		Resolve:  xdsproxy.PrefixResolver(wasmev1.CacheDir, cacheDir),
		Upstream: o.Upstream,
		Listen:   pod.Status.PodIP + ":0",
		Log:      o.Log,
		Cache:    c.moduleCache(),
	})
}
