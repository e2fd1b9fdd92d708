package node_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"wasme.io/wasme/internal/testing/node"
	"wasme.io/wasme/internal/testing/wasmbuild"
	"wasme.io/wasme/pkg/wasmimage"
)

const bookinfo = "bookinfo"

// rollout is a Deployment's ReplicaSets and its current pods.
type rollout struct {
	replicaSets map[string]string // name → pod-template-hash
	pods        map[string]string // pod UID → pod-template-hash
	annotated   int               // pods carrying the node cache's sidecar volume annotation
}

func observe(t *testing.T, n *node.Node, app string) rollout {
	t.Helper()
	ctx := context.Background()
	sel := metav1.ListOptions{LabelSelector: "app=" + app}
	rss, err := n.Clientset.AppsV1().ReplicaSets(bookinfo).List(ctx, sel)
	if err != nil {
		t.Fatal(err)
	}
	pods, err := n.Clientset.CoreV1().Pods(bookinfo).List(ctx, sel)
	if err != nil {
		t.Fatal(err)
	}
	r := rollout{replicaSets: map[string]string{}, pods: map[string]string{}}
	for _, rs := range rss.Items {
		r.replicaSets[rs.Name] = rs.Labels[appsv1.DefaultDeploymentUniqueLabelKey]
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		r.pods[string(p.UID)] = p.Labels[appsv1.DefaultDeploymentUniqueLabelKey]
		if _, ok := p.Annotations["sidecar.istio.io/userVolume"]; ok {
			r.annotated++
		}
	}
	return r
}

// waitRolledOut waits until the Deployment's rollout is complete and only its current pods run.
func waitRolledOut(t *testing.T, n *node.Node, name string, replicas int) {
	t.Helper()
	ctx := context.Background()
	if _, err := n.Kubectl(ctx, "-n", bookinfo, "rollout", "status", "deployment/"+name, "--timeout=5m"); err != nil {
		t.Fatalf("%v\npods:%s", err, podStates(n.Clientset, bookinfo))
	}
	if err := eventually(2*time.Minute, func() error {
		if got := len(observe(t, n, "details").pods); got != replicas {
			return fmt.Errorf("%d pods of %s, want %d (old ones still terminating)", got, name, replicas)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func hashes(m map[string]string) []string {
	seen := map[string]bool{}
	var out []string
	for _, h := range m {
		if !seen[h] {
			seen[h] = true
			out = append(out, h)
		}
	}
	sort.Strings(out)
	return out
}

func overlap(a, b map[string]string) int {
	c := 0
	for k := range a {
		if _, ok := b[k]; ok {
			c++
		}
	}
	return c
}

// TestFilterDeployment deploys the seed's filter onto Bookinfo's details-v1 (two replicas) on
// the real node: the operator resolves and validates the image, the cache pod fetches the
// module from the operator through the Service and writes it under its sha256 into the
// hostPath, and the Deployment's pods are replaced exactly once (one new ReplicaSet, every
// pod new, all annotated), status Ready. Deleting the FilterDeployment rolls the pods back
// once, onto the original ReplicaSet, without the annotations.
func TestFilterDeployment(t *testing.T) {
	n := sharedNode(t)
	install(t, n)
	ctx := context.Background()
	cs := n.Clientset
	// The test registry speaks plain HTTP: the admin's label allows plainHttp in this namespace.
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: bookinfo, Labels: map[string]string{"wasme.io/allow-insecure-registries": "true"},
	}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := eventually(time.Minute, func() error {
		_, err := cs.CoreV1().ServiceAccounts(bookinfo).Get(ctx, "default", metav1.GetOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	dep := detailsDeployment(bookinfo, "details-v1", pushDetails(t, n), 2)
	dep.Labels["app"], dep.Spec.Selector.MatchLabels["app"], dep.Spec.Template.Labels["app"] = "details", "details", "details"
	if _, err := cs.AppsV1().Deployments(bookinfo).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRolledOut(t, n, "details-v1", 2)
	before := observe(t, n, "details")
	if len(before.replicaSets) != 1 || before.annotated != 0 {
		t.Fatalf("before the filter: %d ReplicaSets, %d annotated pods; want 1 and 0", len(before.replicaSets), before.annotated)
	}

	mod := wasmbuild.ExampleT(t, "custom-header")
	sum := sha256.Sum256(mod)
	sumHex := hex.EncodeToString(sum[:])
	if _, err := wasmimage.Push(ctx, n.Registry.Host+"/ryysud/custom-header:v0.1", mod,
		wasmimage.RuntimeConfig{RootIDs: []string{"add_header"}}, wasmimage.WithPlainHTTP(true)); err != nil {
		t.Fatal(err)
	}
	fd := filepath.Join(t.TempDir(), "fd.yaml")
	// The seed's FilterDeployment, but for the test registry (plain HTTP) and with the Istio
	// version given: the node runs no istiod.
	if err := os.WriteFile(fd, fmt.Appendf(nil, `apiVersion: wasme.io/v1
kind: FilterDeployment
metadata:
  name: bookinfo-custom-filter
  namespace: %s
spec:
  deployment:
    istio:
      kind: Deployment
      istioVersion: "1.24"
  filter:
    image: %s/ryysud/custom-header:v0.1
    imagePullOptions:
      plainHttp: true
`, bookinfo, n.RegistryHost), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Kubectl(ctx, "apply", "-f", fd); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Kubectl(ctx, "-n", bookinfo, "wait", "--for=condition=Ready", "fd/bookinfo-custom-filter", "--timeout=5m"); err != nil {
		out, _ := n.Kubectl(ctx, "-n", bookinfo, "get", "fd", "-o", "yaml")
		logs, _ := n.Kubectl(ctx, "-n", "wasme", "logs", "deployment/wasme-operator", "--tail=40")
		t.Fatalf("%v\n%s\noperator log:\n%s\npods:%s", err, out, logs, podStates(cs, "wasme"))
	}
	waitRolledOut(t, n, "details-v1", 2)
	with := observe(t, n, "details")
	if len(with.replicaSets) != 2 || len(hashes(with.pods)) != 1 || overlap(before.pods, with.pods) != 0 || with.annotated != 2 {
		t.Fatalf("with the filter: %d ReplicaSets (want 2), pods of %d templates (want 1), %d pods kept (want 0), %d annotated (want 2)",
			len(with.replicaSets), len(hashes(with.pods)), overlap(before.pods, with.pods), with.annotated)
	}
	file := filepath.Join("/var/local/lib/wasme-cache", sumHex)
	got, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("the module on the node's hostPath: %v", err)
	}
	if !bytes.Equal(got, mod) {
		t.Fatalf("%s holds %d bytes that are not the module's %d", file, len(got), len(mod))
	}
	if fi, err := os.Stat(file); err == nil && ownerOf(fi) != "65532:65532" {
		t.Errorf("%s is owned by %s, want the cache's 65532:65532", file, ownerOf(fi))
	}
	efs, err := n.Kubectl(ctx, "-n", bookinfo, "get", "envoyfilters.networking.istio.io", "-o", "name")
	if err != nil {
		t.Fatal(err)
	}
	if c := bytes.Count([]byte(efs), []byte("envoyfilter")); c != 1 {
		t.Errorf("%d EnvoyFilters, want 1:\n%s", c, efs)
	}

	if _, err := n.Kubectl(ctx, "-n", bookinfo, "delete", "fd", "bookinfo-custom-filter", "--timeout=3m"); err != nil {
		t.Fatal(err)
	}
	if err := eventually(3*time.Minute, func() error {
		d, err := cs.AppsV1().Deployments(bookinfo).Get(ctx, "details-v1", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if _, ok := d.Spec.Template.Annotations["sidecar.istio.io/userVolume"]; ok {
			return fmt.Errorf("details-v1 still carries the volume annotations")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	waitRolledOut(t, n, "details-v1", 2)
	after := observe(t, n, "details")
	if len(after.replicaSets) != 2 || after.annotated != 0 || overlap(with.pods, after.pods) != 0 ||
		fmt.Sprint(hashes(after.pods)) != fmt.Sprint(hashes(before.pods)) {
		t.Fatalf("after deleting the filter: %d ReplicaSets (want 2: the original is reused), %d annotated (want 0), %d pods kept (want 0), templates %v (want the original %v)",
			len(after.replicaSets), after.annotated, overlap(with.pods, after.pods), hashes(after.pods), hashes(before.pods))
	}
}
