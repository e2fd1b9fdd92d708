package node_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"wasme.io/wasme/internal/testing/node"
)

// TestClusterDNS resolves Service names inside a pod through the node's CoreDNS, as the seed's
// `curl http://details.bookinfo:9080` needs: the short name of a Service in another namespace
// (through kubelet's search domains), its full name, the API server's name, and a name that
// does not exist (NXDOMAIN, not an address).
func TestClusterDNS(t *testing.T) {
	n := sharedNode(t)
	ctx := context.Background()
	cs := n.Clientset
	target := newNamespace(t, cs, "dns-target")
	svc, err := cs.CoreV1().Services(target).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "details"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "details"},
			Ports: []corev1.ServicePort{{Port: 9080, TargetPort: intstr.FromInt32(9080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	image, err := n.PushProgram(ctx, "./internal/testing/node/lookup", "lookup", nil)
	if err != nil {
		t.Fatal(err)
	}
	ns := newNamespace(t, cs, "dns-client")
	short := "details." + target
	full := "details." + target + ".svc." + node.ClusterDomain
	names := []string{short, full, "kubernetes.default", "missing." + target}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "lookup"},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers:    []corev1.Container{{Name: "lookup", Image: image, Args: names}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var phase corev1.PodPhase
	if err := eventually(3*time.Minute, func() error {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "lookup", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if phase = p.Status.Phase; phase != corev1.PodSucceeded && phase != corev1.PodFailed {
			return fmt.Errorf("pod lookup is %s%s", phase, podStates(cs, ns))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	out, err := n.Kubectl(ctx, "-n", ns, "logs", "lookup")
	if err != nil {
		t.Fatal(err)
	}
	if phase != corev1.PodSucceeded {
		t.Fatalf("pod lookup %s; its output:\n%s", phase, out)
	}
	got := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		name, rest, _ := strings.Cut(l, " ")
		got[name] = rest
	}
	for _, c := range []struct{ name, want string }{
		{short, svc.Spec.ClusterIP},
		{full, svc.Spec.ClusterIP},
		{"kubernetes.default", "10.253.0.1"},
	} {
		if got[c.name] != c.want {
			t.Errorf("in a pod, %s resolves to %q, want %s (the Service's cluster IP); resolver output:\n%s", c.name, got[c.name], c.want, out)
		}
	}
	if r := got["missing."+target]; !strings.Contains(r, "no such host") {
		t.Errorf("in a pod, missing.%s resolves to %q, want an error saying no such host", target, r)
	}
}
