package node_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"wasme.io/wasme/internal/testing/node"
	"wasme.io/wasme/internal/testing/testenv"
	"wasme.io/wasme/internal/testing/tools"
)

// This file sorts after the kustomize install's tests and before TestTeardown: the Helm
// release reuses the names of deploy/'s objects, so TestHelmInstall removes that install first.

// helm runs the pinned helm against the node as the administrator, with no user's
// configuration or repositories.
func helm(ctx context.Context, t *testing.T, n *node.Node, args ...string) (string, error) {
	t.Helper()
	bin, err := tools.Helm(os.Stderr)
	if err != nil {
		t.Fatalf("helm (hack/tools/build.sh helm): %v", err)
	}
	home := t.TempDir()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--kubeconfig", n.Kubeconfig}, args...)...)
	cmd.Env = append(os.Environ(), "HELM_CONFIG_HOME="+home, "HELM_CACHE_HOME="+home, "HELM_DATA_HOME="+home)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("helm %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errOut.String()))
	}
	return out.String(), nil
}

// ref is the object as kubectl names it: kind.group/name.
func ref(o *unstructured.Unstructured) string {
	kind := strings.ToLower(o.GetKind())
	if g := o.GetObjectKind().GroupVersionKind().Group; g != "" {
		kind += "." + g
	}
	return kind + "/" + o.GetName()
}

// gone is nil once kubectl finds none of the objects.
func gone(ctx context.Context, n *node.Node, objs []*unstructured.Unstructured) error {
	for _, o := range objs {
		args := []string{"get", ref(o), "--ignore-not-found", "-o", "name"}
		if ns := o.GetNamespace(); ns != "" {
			args = append(args, "-n", ns)
		}
		out, err := n.Kubectl(ctx, args...)
		if err != nil {
			return err
		}
		if s := strings.TrimSpace(out); s != "" {
			return fmt.Errorf("%s still there", s)
		}
	}
	return nil
}

// uninstallKustomize removes what install applied besides the CRDs: deploy/wasme.yaml (its
// namespace with it) and the admission policies of deploy/crds.yaml, and the NodeCache the
// cache wrote, so what follows is only the Helm release's doing.
func uninstallKustomize(ctx context.Context, t *testing.T, n *node.Node) {
	t.Helper()
	root := tools.RepoRoot()
	var objs []*unstructured.Unstructured
	for _, f := range []string{"wasme.yaml", "crds.yaml"} {
		o, err := testenv.ReadObjects(filepath.Join(root, "deploy", f))
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, o...)
	}
	var remove []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() != "CustomResourceDefinition" {
			remove = append(remove, o)
			args := []string{"delete", ref(o), "--ignore-not-found", "--wait=false"}
			if ns := o.GetNamespace(); ns != "" {
				args = append(args, "-n", ns)
			}
			if _, err := n.Kubectl(ctx, args...); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := n.Kubectl(ctx, "delete", "nodecaches.wasme.io", node.Name, "--ignore-not-found"); err != nil {
		t.Fatal(err)
	}
	if err := eventually(3*time.Minute, func() error { return gone(ctx, n, remove) }); err != nil {
		t.Fatalf("removing the kustomize install: %v", err)
	}
	installed = false
}

// TestHelmInstall installs wasme with `helm install` of charts/wasme, the same image and the
// value for what the kustomize overlay changes (the allowed registry): the operator Deployment and the cache DaemonSet become Ready through
// their probes, the cache writes its NodeCache and the operator holds the lease. `helm
// uninstall` then removes every object of the release; the CRDs stay, as Helm leaves them.
func TestHelmInstall(t *testing.T) {
	n := sharedNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	// The node is this test binary's: without the kustomize install there is no NodeCache yet
	// (nor its CRD, which the chart's crds/ then brings).
	if installed {
		uninstallKustomize(ctx, t, n)
	}
	name, digest := wasmeImage(t, n)
	installCRDs(ctx, t, n) // Istio's; the chart brings wasme's in crds/
	cs := n.Clientset

	// helm install stores the release in its namespace before creating anything, so the
	// namespace comes first, as values.yaml tells users (namespace.create=false).
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: "wasme", Labels: map[string]string{"istio-injection": "disabled"},
	}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if out, err := helm(ctx, t, n, "install", "wasme", filepath.Join(tools.RepoRoot(), "charts", "wasme"), "-n", "wasme",
		"--set", "namespace.create=false",
		"--set", "image.repository="+name, "--set", "image.digest="+digest,
		"--set-json", fmt.Sprintf(`operator.allowedRegistries=[%q]`, n.RegistryHost),
	); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := waitDeploymentReady(ctx, cs, "wasme", "wasme-operator", 5*time.Minute); err != nil {
		t.Fatalf("%v%s", err, n.LogTails())
	}
	if _, err := n.Kubectl(ctx, "-n", "wasme", "rollout", "status", "daemonset/wasme-cache", "--timeout=5m"); err != nil {
		t.Fatalf("%v\npods:%s%s", err, podStates(cs, "wasme"), n.LogTails())
	}
	t.Logf("helm install to operator and cache Ready: %v", time.Since(start).Round(100*time.Millisecond))

	pods, err := cs.CoreV1().Pods("wasme").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var operatorPod string
	for _, p := range pods.Items {
		if p.Labels["app"] == "wasme-operator" {
			operatorPod = p.Name
		}
		if img := p.Spec.Containers[0].Image; img != name+"@"+digest {
			t.Errorf("pod %s runs %s, want the chart's image.repository@image.digest %s@%s", p.Name, img, name, digest)
		}
	}
	d, err := cs.AppsV1().Deployments("wasme").Get(ctx, "wasme-operator", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Labels["app.kubernetes.io/managed-by"] != "Helm" {
		t.Errorf("wasme-operator labels %v: not the Helm release's", d.Labels)
	}
	checkLeaderAndReport(ctx, t, n, operatorPod)

	manifest, err := helm(ctx, t, n, "get", "manifest", "wasme", "-n", "wasme")
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "manifest.yaml")
	if err := os.WriteFile(f, []byte(manifest), 0o600); err != nil {
		t.Fatal(err)
	}
	release, err := testenv.ReadObjects(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(release) < 10 {
		t.Fatalf("helm get manifest lists %d objects", len(release))
	}
	if out, err := helm(ctx, t, n, "uninstall", "wasme", "-n", "wasme", "--wait", "--timeout=5m"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := eventually(2*time.Minute, func() error {
		if err := gone(ctx, n, release); err != nil {
			return err
		}
		// The pods go with their workloads and the release record (Secrets owner=helm) with
		// the release; what the operator made itself (its lease, module TLS Secret and CA
		// ConfigMap) is no release object and goes with the namespace below.
		for _, what := range [][]string{{"pods"}, {"secrets", "-l", "owner=helm"}} {
			left, err := n.Kubectl(ctx, append([]string{"get", "-n", "wasme", "-o", "name"}, what...)...)
			if err != nil {
				return err
			}
			if s := strings.TrimSpace(left); s != "" {
				return fmt.Errorf("left in namespace wasme: %s", s)
			}
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	for _, crd := range []string{"filterdeployments.wasme.io", "modulesets.wasme.io", "nodecaches.wasme.io"} {
		if _, err := n.Kubectl(ctx, "get", "crd", crd); err != nil {
			t.Errorf("after helm uninstall the CRD should stay: %v", err)
		}
	}
	if err := cs.CoreV1().Namespaces().Delete(ctx, "wasme", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := eventually(3*time.Minute, func() error {
		_, err := cs.CoreV1().Namespaces().Get(ctx, "wasme", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("namespace wasme still there: %w", err)
	}); err != nil {
		t.Error(err)
	}
}
