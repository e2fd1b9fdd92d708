package node_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"wasme.io/wasme/internal/testing/node"
)

// detailsImage is the Bookinfo details server built and pushed once per run.
var detailsImage string

func pushDetails(t *testing.T, n *node.Node) string {
	t.Helper()
	if detailsImage == "" {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		ref, err := n.PushProgram(ctx, "./internal/testing/node/details", "details", nil)
		if err != nil {
			t.Fatal(err)
		}
		detailsImage = ref
	}
	return detailsImage
}

// detailsDeployment is a Deployment of the details server with an HTTP readiness probe,
// running as a non-root user with a read-only root filesystem.
func detailsDeployment(ns, name, image string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: ptr.To(int64(2)),
					Containers: []corev1.Container{{
						Name: "details", Image: image,
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 9080}},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/health", Port: intstr.FromString("http")}},
							PeriodSeconds: 1,
						},
						SecurityContext: &corev1.SecurityContext{
							RunAsNonRoot: ptr.To(true), ReadOnlyRootFilesystem: ptr.To(true),
							AllowPrivilegeEscalation: ptr.To(false),
							Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
						},
					}},
				},
			},
		},
	}
}

// waitDeploymentReady waits until every replica of the Deployment's latest generation is
// updated and ready. A pod whose image cannot be pulled because it does not exist or the
// registry refused it ends the wait at once with that cause in one line; on timeout the
// error names the pods' states.
func waitDeploymentReady(ctx context.Context, cs kubernetes.Interface, ns, name string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var pulling string // the last pull failure that may still clear (a network error, say)
	for {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil && d.Status.ObservedGeneration >= d.Generation && d.Spec.Replicas != nil &&
			d.Status.UpdatedReplicas == *d.Spec.Replicas && d.Status.ReadyReplicas == *d.Spec.Replicas &&
			d.Status.Replicas == *d.Spec.Replicas {
			return nil
		}
		if err == nil {
			if msg, final := pullFailureOf(ctx, cs, d); final {
				return fmt.Errorf("deployment %s/%s: %s", ns, name, msg)
			} else if msg != "" {
				pulling = msg
			}
		}
		select {
		case <-ctx.Done():
			if pulling != "" {
				return fmt.Errorf("deployment %s/%s not ready: %w: %s", ns, name, ctx.Err(), pulling)
			}
			return fmt.Errorf("deployment %s/%s not ready: %w; pods: %s", ns, name, ctx.Err(), podStates(cs, ns))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// pullFailureOf is the first image pull failure among the Deployment's pods, in one line, and
// whether it is final (the image does not exist, or the registry refused the pull).
func pullFailureOf(ctx context.Context, cs kubernetes.Interface, d *appsv1.Deployment) (string, bool) {
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		return "", false
	}
	pods, err := cs.CoreV1().Pods(d.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return "", false
	}
	var first string
	for _, p := range pods.Items {
		for _, c := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
			w := c.State.Waiting
			if w == nil {
				continue
			}
			msg, final := pullFailure(c.Image, w.Reason, w.Message)
			if msg == "" {
				continue
			}
			msg = fmt.Sprintf("pod %s container %s: %s", p.Name, c.Name, msg)
			if final {
				return msg, true
			}
			if first == "" {
				first = msg
			}
		}
	}
	return first, false
}

// pullFailure names why kubelet cannot pull image, from a waiting container's reason and
// message, in one line: "" when the container does not wait for a pull; final when retrying
// cannot help: the image does not exist, or the registry refused the pull.
func pullFailure(image, reason, message string) (string, bool) {
	if reason != "ErrImagePull" && reason != "ImagePullBackOff" {
		return "", false
	}
	message = strings.Join(strings.Fields(message), " ")
	lower := strings.ToLower(message)
	switch {
	case strings.Contains(lower, "not found") || strings.Contains(lower, "manifest unknown") || strings.Contains(lower, "name unknown"):
		return fmt.Sprintf("image %s not found in its registry (%s: %s)", image, reason, message), true
	case strings.Contains(lower, "unauthorized") || strings.Contains(lower, "forbidden") || strings.Contains(lower, "denied"):
		return fmt.Sprintf("pull of image %s refused by its registry (%s: %s)", image, reason, message), true
	}
	return fmt.Sprintf("pulling image %s fails (%s: %s)", image, reason, message), false
}

func podStates(cs kubernetes.Interface, ns string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var sb strings.Builder
	for _, p := range pods.Items {
		fmt.Fprintf(&sb, "\n  %s: %s", p.Name, p.Status.Phase)
		for _, c := range p.Status.Conditions {
			if c.Status != corev1.ConditionTrue {
				fmt.Fprintf(&sb, " %s=%s(%s)", c.Type, c.Status, c.Message)
			}
		}
		for _, c := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
			if w := c.State.Waiting; w != nil {
				fmt.Fprintf(&sb, " %s waiting %s: %s", c.Name, w.Reason, w.Message)
			}
			if te := c.State.Terminated; te != nil {
				fmt.Fprintf(&sb, " %s terminated %s (%d): %s", c.Name, te.Reason, te.ExitCode, te.Message)
			}
		}
	}
	evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err == nil {
		for _, e := range evs.Items {
			if e.Type == corev1.EventTypeWarning {
				fmt.Fprintf(&sb, "\n  event %s %s: %s", e.InvolvedObject.Name, e.Reason, e.Message)
			}
		}
	}
	return sb.String()
}

func newNamespace(t *testing.T, cs kubernetes.Interface, name string) string {
	t.Helper()
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A namespace's pods need its default ServiceAccount (the controller manager makes it).
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := cs.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{}); err == nil {
			return name
		}
		if time.Now().After(deadline) {
			t.Fatalf("namespace %s has no default ServiceAccount", name)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestPodReady runs a Deployment of the details server on the node: its pod becomes Ready
// through an HTTP probe kubelet runs, and a ClusterIP Service reaches it through kube-proxy's
// rules from the host. It reports the bring-up time to the first Ready pod and the node's memory.
func TestPodReady(t *testing.T) {
	n := sharedNode(t)
	ctx := context.Background()
	cs := n.Clientset
	image := pushDetails(t, n)
	ns := newNamespace(t, cs, "podready")
	created := time.Now()
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, detailsDeployment(ns, "details", image, 1), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := waitDeploymentReady(ctx, cs, ns, "details", 3*time.Minute); err != nil {
		t.Fatalf("%v%s", err, n.LogTails())
	}
	t.Logf("node bring-up %.1fs (Start to Node Ready, incl. building the pause image); pod Ready %.1fs after its Deployment was created; %.1fs after Start (incl. building the details image)",
		n.Ready.Sub(n.Started).Seconds(), time.Since(created).Seconds(), time.Since(n.Started).Seconds())
	if mem, err := n.Memory(); err == nil {
		t.Logf("node memory (RSS of every component, shim and container): %d MiB", mem>>20)
	}

	svc, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "details"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "details"},
			Ports: []corev1.ServicePort{{Port: 9080, TargetPort: intstr.FromInt32(9080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + svc.Spec.ClusterIP + ":9080/details/0"
	hc := &http.Client{Timeout: 2 * time.Second}
	var body string
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := hc.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s through the Service: %v %s", url, err, body)
		}
		time.Sleep(250 * time.Millisecond)
	}
	if !strings.Contains(body, `"author":"William Shakespeare"`) {
		t.Fatalf("GET %s = %s, want the details answer", url, body)
	}
}

// TestImageNotFound creates a Deployment whose image is not in the node's registry: the
// wait for it ends with the cause, named in one line, not with a timeout.
func TestImageNotFound(t *testing.T) {
	n := sharedNode(t)
	ctx := context.Background()
	ns := newNamespace(t, n.Clientset, "pull-missing")
	image := n.RegistryHost + "/does-not-exist:v1"
	if _, err := n.Clientset.AppsV1().Deployments(ns).Create(ctx, detailsDeployment(ns, "missing", image, 1), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err := waitDeploymentReady(ctx, n.Clientset, ns, "missing", 3*time.Minute)
	t.Logf("waitDeploymentReady: %v", err)
	switch {
	case err == nil:
		t.Fatal("a Deployment of an image that does not exist became ready")
	case errors.Is(err, context.DeadlineExceeded):
		t.Fatalf("the wait ran out instead of naming the cause: %v", err)
	case !strings.Contains(err.Error(), "image "+image+" not found"), strings.Contains(err.Error(), "\n"):
		t.Errorf("error %q: want one line naming image %s not found", err, image)
	}
	if err := n.Clientset.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
		t.Error(err)
	}
}

// TestPullFailure classifies kubelet's pull errors as containerd reports them.
func TestPullFailure(t *testing.T) {
	const img = "registry.example.com/app:v1"
	for _, tc := range []struct {
		reason, message string
		want            string
		final           bool
	}{
		{"ErrImagePull", `rpc error: code = NotFound desc = failed to pull and unpack image "registry.example.com/app:v1": failed to resolve reference "registry.example.com/app:v1": registry.example.com/app:v1: not found`,
			"image " + img + " not found in its registry (ErrImagePull: rpc error: code = NotFound", true},
		{"ImagePullBackOff", `Back-off pulling image "registry.example.com/app:v1": ErrImagePull: failed to resolve reference: unexpected status from HEAD request: 401 Unauthorized`,
			"pull of image " + img + " refused by its registry (ImagePullBackOff: Back-off", true},
		{"ErrImagePull", "failed to authorize: failed to fetch anonymous token: 403 Forbidden", "pull of image " + img + " refused", true},
		{"ErrImagePull", "failed to do request: dial tcp 192.0.2.1:443: connect: connection refused\nretrying",
			"pulling image " + img + " fails (ErrImagePull: failed to do request: dial tcp 192.0.2.1:443: connect: connection refused retrying)", false},
		{"ContainerCreating", "", "", false},
		{"CrashLoopBackOff", "back-off 10s restarting failed container", "", false},
	} {
		got, final := pullFailure(img, tc.reason, tc.message)
		if !strings.HasPrefix(got, tc.want) || final != tc.final || strings.Contains(got, "\n") || (tc.want == "") != (got == "") {
			t.Errorf("pullFailure(%q, %q) = %q, %v; want prefix %q, %v", tc.reason, tc.message, got, final, tc.want, tc.final)
		}
	}
}
