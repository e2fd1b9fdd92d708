package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"wasme.io/wasme/internal/testing/node"
)

// The seed's annotations on the workload (docs/api.md): the node cache's directory as a
// hostPath volume, mounted read-only into the sidecar.
const (
	seedUserVolume      = `[{"name":"cache-dir","hostPath":{"path":"/var/local/lib/wasme-cache"}}]`
	seedUserVolumeMount = `[{"mountPath":"/var/local/lib/wasme-cache","name":"cache-dir","readOnly":true}]`
)

var istioInstalled bool

// installIstio runs node.InstallIstio once per run (istioctl install of the default profile,
// hub and tag the node's registry) and fails the test with istioctl's output and the pods of
// istio-system if it fails.
func installIstio(t *testing.T, n *node.Node) {
	t.Helper()
	if istioInstalled {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	if err := n.InstallIstio(ctx, node.IstioOptions{Out: os.Stderr}); err != nil {
		t.Fatalf("%v\npods:%s", err, podStates(n.Clientset, node.IstioNamespace))
	}
	t.Logf("istioctl install: %.1fs", time.Since(start).Seconds())
	istioInstalled = true
}

// containerOf is the pod's container name, among its containers or its init containers (an
// injected sidecar is an init container with restartPolicy Always when the injector uses
// native sidecars).
func containerOf(spec *corev1.PodSpec, name string) *corev1.Container {
	for _, cs := range [][]corev1.Container{spec.Containers, spec.InitContainers} {
		for i := range cs {
			if cs[i].Name == name {
				return &cs[i]
			}
		}
	}
	return nil
}

// TestIstioInjection installs Istio with istioctl (node.InstallIstio) and checks istiod and its
// sidecar injector through real admission: istiod is Ready, the injector's webhook
// configuration names istiod's Service and carries the CA istiod made (istiod patched it), a
// pod created in a namespace labelled istio-injection=enabled comes back from the API server
// with istio-init and istio-proxy and the seed's userVolume/userVolumeMount annotations turned
// into a hostPath volume mounted read-only on istio-proxy; a pod of an unlabelled namespace
// is left alone. The injected pod then becomes Ready through pilot-agent (the proxyv2 image:
// the real pilot-agent, wasme's test proxy as envoy), as the ingress gateway did for istioctl.
func TestIstioInjection(t *testing.T) {
	n := sharedNode(t)
	installIstio(t, n)
	ctx := context.Background()
	cs := n.Clientset
	if err := waitDeploymentReady(ctx, cs, node.IstioNamespace, "istiod", time.Minute); err != nil {
		t.Fatal(err)
	}
	wh, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "istio-sidecar-injector", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(wh.Webhooks) == 0 {
		t.Fatal("the istio-sidecar-injector MutatingWebhookConfiguration has no webhooks")
	}
	for _, w := range wh.Webhooks {
		s := w.ClientConfig.Service
		if s == nil || s.Namespace != node.IstioNamespace || s.Name != "istiod" {
			t.Errorf("webhook %s calls %+v, want the istiod Service of %s", w.Name, s, node.IstioNamespace)
		}
		if len(w.ClientConfig.CABundle) == 0 {
			t.Errorf("webhook %s has no caBundle: istiod did not patch in its CA", w.Name)
		}
	}

	pod := func(ns string) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "details", Labels: map[string]string{"app": "details"},
				Annotations: map[string]string{
					"sidecar.istio.io/userVolume":      seedUserVolume,
					"sidecar.istio.io/userVolumeMount": seedUserVolumeMount,
				}},
			Spec: corev1.PodSpec{
				TerminationGracePeriodSeconds: ptr.To(int64(2)),
				Containers: []corev1.Container{{
					Name: "details", Image: pushDetails(t, n),
					Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 9080}},
					// The injector rewrites this probe to pilot-agent's /app-health/ endpoint.
					ReadinessProbe: &corev1.Probe{
						ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/health", Port: intstr.FromString("http")}},
						PeriodSeconds: 1,
					},
				}},
			},
		}
		// The API server calls the injector during this create: what comes back is the pod
		// as admitted.
		created, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("creating a pod in %s: %v", ns, err)
		}
		return created
	}

	plain := newNamespace(t, cs, "no-injection")
	if p := pod(plain); containerOf(&p.Spec, "istio-proxy") != nil || containerOf(&p.Spec, "istio-init") != nil {
		t.Errorf("a pod of unlabelled namespace %s was injected: %s", plain, specSummary(&p.Spec))
	}

	meshed := newNamespace(t, cs, "injected")
	if _, err := n.Kubectl(ctx, "label", "namespace", meshed, "istio-injection=enabled"); err != nil {
		t.Fatal(err)
	}
	p := pod(meshed)
	if _, ok := p.Annotations["sidecar.istio.io/status"]; !ok {
		t.Errorf("pod %s/%s has no sidecar.istio.io/status annotation: the injector did not run on it", meshed, p.Name)
	}
	initC := containerOf(&p.Spec, "istio-init")
	proxy := containerOf(&p.Spec, "istio-proxy")
	if initC == nil || proxy == nil {
		t.Fatalf("pod %s/%s lacks istio-init or istio-proxy: %s", meshed, p.Name, specSummary(&p.Spec))
	}
	if !slices.ContainsFunc(p.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == "istio-init" }) ||
		!slices.Contains(initC.Args, "istio-iptables") {
		t.Errorf("istio-init is not the init container running pilot-agent istio-iptables: %s %v", initC.Image, initC.Args)
	}
	for _, c := range []*corev1.Container{initC, proxy} {
		if want := n.RegistryHost + "/proxyv2:" + node.IstioTag; c.Image != want {
			t.Errorf("%s runs %s, want %s (istioctl's hub and tag)", c.Name, c.Image, want)
		}
	}
	var vol *corev1.Volume
	for i := range p.Spec.Volumes {
		if p.Spec.Volumes[i].Name == "cache-dir" {
			vol = &p.Spec.Volumes[i]
		}
	}
	if vol == nil || vol.HostPath == nil || vol.HostPath.Path != "/var/local/lib/wasme-cache" {
		t.Errorf("pod volume cache-dir = %+v, want hostPath /var/local/lib/wasme-cache from the userVolume annotation", vol)
	}
	var mount *corev1.VolumeMount
	for i := range proxy.VolumeMounts {
		if proxy.VolumeMounts[i].Name == "cache-dir" {
			mount = &proxy.VolumeMounts[i]
		}
	}
	if mount == nil || mount.MountPath != "/var/local/lib/wasme-cache" || !mount.ReadOnly {
		t.Errorf("istio-proxy mount of cache-dir = %+v, want read-only at /var/local/lib/wasme-cache from the userVolumeMount annotation", mount)
	}
	t.Logf("injected: %s", specSummary(&p.Spec))

	// The sidecar starts: istio-init's istio-iptables rules, pilot-agent with the test proxy
	// as its envoy, Ready through pilot-agent's readiness probe (15021, which asks the proxy
	// whether it applied its listeners and clusters from istiod), and the app's probe
	// through pilot-agent.
	start := time.Now()
	if err := eventually(3*time.Minute, func() error {
		got, err := cs.CoreV1().Pods(meshed).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range got.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("pod %s/%s not Ready:%s", meshed, p.Name, podStates(cs, meshed))
	}); err != nil {
		logs, _ := n.Kubectl(ctx, "-n", meshed, "logs", p.Name, "-c", "istio-proxy", "--tail=30")
		t.Fatalf("%v\nistio-proxy log:\n%s", err, logs)
	}
	t.Logf("injected pod Ready %.1fs after its creation", time.Since(start).Seconds())
	// istioctl install waited for it; it is still Ready.
	if err := waitDeploymentReady(ctx, cs, node.IstioNamespace, "istio-ingressgateway", time.Minute); err != nil {
		t.Error(err)
	}
	for _, ns := range []string{plain, meshed} {
		if err := cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
			t.Error(err)
		}
	}
}

// specSummary names the pod's init containers and containers with their images, for messages.
func specSummary(spec *corev1.PodSpec) string {
	type c struct{ Name, Image string }
	var s struct{ Init, Containers []c }
	for _, x := range spec.InitContainers {
		s.Init = append(s.Init, c{x.Name, x.Image})
	}
	for _, x := range spec.Containers {
		s.Containers = append(s.Containers, c{x.Name, x.Image})
	}
	b, _ := json.Marshal(s)
	return string(b)
}
