package node_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
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
	annotated   int               // pods carrying the seed's sidecar volume and volume mount annotations
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
		_, vol := p.Annotations["sidecar.istio.io/userVolume"]
		_, mount := p.Annotations["sidecar.istio.io/userVolumeMount"]
		if vol && mount {
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

// revision is the Deployment's rollout counter: each rollout adds one, also one back to an
// older ReplicaSet.
func revision(t *testing.T, n *node.Node, name string) int {
	t.Helper()
	d, err := n.Clientset.AppsV1().Deployments(bookinfo).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := strconv.Atoi(d.Annotations["deployment.kubernetes.io/revision"])
	if err != nil {
		t.Fatalf("details-v1 revision %q: %v", d.Annotations["deployment.kubernetes.io/revision"], err)
	}
	return r
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

var (
	bookinfoReady bool
	filterModule  []byte
)

// bookinfoDetails creates, once, the bookinfo namespace (labelled so plainHttp is allowed:
// the test registry speaks plain HTTP) and details-v1 with two replicas, and waits for it.
func bookinfoDetails(t *testing.T, n *node.Node) {
	t.Helper()
	if bookinfoReady {
		return
	}
	ctx := context.Background()
	cs := n.Clientset
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
	bookinfoReady = true
}

// pushFilter pushes the seed's filter (examples/filters/custom-header) once as
// ryysud/custom-header:v0.1 and returns the module and its sha256.
func pushFilter(t *testing.T, n *node.Node) ([]byte, string) {
	t.Helper()
	if filterModule == nil {
		mod := wasmbuild.ExampleT(t, "custom-header")
		if _, err := wasmimage.Push(context.Background(), n.Registry.Host+"/ryysud/custom-header:v0.1", mod,
			wasmimage.RuntimeConfig{RootIDs: []string{"add_header"}}, wasmimage.WithPlainHTTP(true)); err != nil {
			t.Fatal(err)
		}
		filterModule = mod
	}
	sum := sha256.Sum256(filterModule)
	return filterModule, hex.EncodeToString(sum[:])
}

// applyFD applies the seed's FilterDeployment under name with kubectl, but for the test
// registry (plain HTTP) and with the Istio version given: the node runs no istiod.
func applyFD(t *testing.T, n *node.Node, name string) {
	t.Helper()
	fd := filepath.Join(t.TempDir(), "fd.yaml")
	if err := os.WriteFile(fd, fmt.Appendf(nil, `apiVersion: wasme.io/v1
kind: FilterDeployment
metadata:
  name: %s
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
`, name, bookinfo, n.RegistryHost), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Kubectl(context.Background(), "apply", "-f", fd); err != nil {
		t.Fatal(err)
	}
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
	bookinfoDetails(t, n)
	before := observe(t, n, "details")
	rev0 := revision(t, n, "details-v1")
	if len(before.replicaSets) != 1 || before.annotated != 0 {
		t.Fatalf("before the filter: %d ReplicaSets, %d annotated pods; want 1 and 0", len(before.replicaSets), before.annotated)
	}
	mod, sumHex := pushFilter(t, n)
	applyFD(t, n, "bookinfo-custom-filter")
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
	if r := revision(t, n, "details-v1"); r != rev0+1 {
		t.Errorf("details-v1 at revision %d after the filter, want %d: rolled more than once", r, rev0+1)
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
	if r := revision(t, n, "details-v1"); r != rev0+2 {
		t.Errorf("details-v1 at revision %d after deleting the filter, want %d: rolled back more than once", r, rev0+2)
	}
	if len(after.replicaSets) != 2 || after.annotated != 0 || overlap(with.pods, after.pods) != 0 ||
		fmt.Sprint(hashes(after.pods)) != fmt.Sprint(hashes(before.pods)) {
		t.Fatalf("after deleting the filter: %d ReplicaSets (want 2: the original is reused), %d annotated (want 0), %d pods kept (want 0), templates %v (want the original %v)",
			len(after.replicaSets), after.annotated, overlap(with.pods, after.pods), hashes(after.pods), hashes(before.pods))
	}
}

// podOf is the one running, not terminating pod of app in namespace ns.
func podOf(ctx context.Context, n *node.Node, ns, app string) (*corev1.Pod, error) {
	pods, err := n.Clientset.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		return nil, err
	}
	var live []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			live = append(live, p)
		}
	}
	if len(live) != 1 {
		return nil, fmt.Errorf("%d live pods of %s, want 1", len(live), app)
	}
	ready := false
	for _, c := range live[0].Status.Conditions {
		ready = ready || (c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue)
	}
	if !ready {
		return nil, fmt.Errorf("pod %s is not Ready", live[0].Name)
	}
	return &live[0], nil
}

// metric sums the samples of a Prometheus metric (all label values) from url; a metric with
// no sample yet is 0.
func metric(url, name string) (float64, error) {
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	var sum float64
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, name+"{") && !strings.HasPrefix(l, name+" ") {
			continue
		}
		f := strings.Fields(l)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %q: %w", url, l, err)
		}
		sum += v
	}
	return sum, nil
}

// TestRestarts deletes the operator pod while its FilterDeployment rolls details-v1: the
// Deployment's new operator pod takes the lease and the rollout converges with one
// EnvoyFilter and one roll. Then it deletes the cache pod: the DaemonSet's new pod finds the
// module on the hostPath and asks the operator's module server for nothing.
func TestRestarts(t *testing.T) {
	n := sharedNode(t)
	install(t, n)
	bookinfoDetails(t, n)
	ctx := context.Background()
	cs := n.Clientset
	_, sumHex := pushFilter(t, n)
	waitRolledOut(t, n, "details-v1", 2)
	before := observe(t, n, "details")
	rev0 := revision(t, n, "details-v1")
	oldOp, err := podOf(ctx, n, "wasme", "wasme-operator")
	if err != nil {
		t.Fatal(err)
	}

	applyFD(t, n, "restart-filter")
	t.Cleanup(func() {
		_, _ = n.Kubectl(context.Background(), "-n", bookinfo, "delete", "fd", "restart-filter", "--ignore-not-found", "--timeout=3m")
	})
	// Mid-rollout: the operator has just patched the template; the pods are being replaced.
	if err := eventually(3*time.Minute, func() error {
		d, err := cs.AppsV1().Deployments(bookinfo).Get(ctx, "details-v1", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if _, ok := d.Spec.Template.Annotations["sidecar.istio.io/userVolume"]; !ok {
			return fmt.Errorf("details-v1 not patched yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := cs.CoreV1().Pods("wasme").Delete(ctx, oldOp.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Logf("operator pod deleted with %d of details-v1's 2 original pods still running", overlap(before.pods, observe(t, n, "details").pods))
	var newOp *corev1.Pod
	if err := eventually(3*time.Minute, func() error {
		p, err := podOf(ctx, n, "wasme", "wasme-operator")
		if err != nil {
			return err
		}
		if p.Name == oldOp.Name {
			return fmt.Errorf("the old operator pod is still the one")
		}
		l, err := cs.CoordinationV1().Leases("wasme").Get(ctx, "wasme-operator.wasme.io", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if h := l.Spec.HolderIdentity; h == nil || !strings.HasPrefix(*h, p.Name) {
			return fmt.Errorf("lease held by %v, want the new operator pod %s", h, p.Name)
		}
		newOp = p
		return nil
	}); err != nil {
		t.Fatalf("%v\npods:%s", err, podStates(cs, "wasme"))
	}
	if _, err := n.Kubectl(ctx, "-n", bookinfo, "wait", "--for=condition=Ready", "fd/restart-filter", "--timeout=5m"); err != nil {
		t.Fatal(err)
	}
	waitRolledOut(t, n, "details-v1", 2)
	with := observe(t, n, "details")
	if r := revision(t, n, "details-v1"); r != rev0+1 || with.annotated != 2 || overlap(before.pods, with.pods) != 0 {
		t.Errorf("after the operator's restart: revision %d (want %d, one roll), %d annotated pods (want 2), %d pods kept (want 0)",
			r, rev0+1, with.annotated, overlap(before.pods, with.pods))
	}
	efs, err := n.Kubectl(ctx, "-n", bookinfo, "get", "envoyfilters.networking.istio.io", "-o", "name")
	if err != nil {
		t.Fatal(err)
	}
	if c := strings.Count(efs, "envoyfilter"); c != 1 {
		t.Errorf("%d EnvoyFilters after the operator's restart, want 1:\n%s", c, efs)
	}

	opMetrics := "http://" + newOp.Status.PodIP + ":8080/metrics"
	served0, err := metric(opMetrics, "wasme_moduleserver_requests_total")
	if err != nil {
		t.Fatal(err)
	}
	oldCache, err := podOf(ctx, n, "wasme", "wasme-cache")
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.CoreV1().Pods("wasme").Delete(ctx, oldCache.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	var newCache *corev1.Pod
	if err := eventually(3*time.Minute, func() error {
		p, err := podOf(ctx, n, "wasme", "wasme-cache")
		if err != nil {
			return err
		}
		if p.Name == oldCache.Name {
			return fmt.Errorf("the old cache pod is still the one")
		}
		newCache = p
		return nil
	}); err != nil {
		t.Fatalf("%v\npods:%s", err, podStates(cs, "wasme"))
	}
	// The new daemon has looked at its directory once it reported after it started.
	started := newCache.CreationTimestamp.Time
	if err := eventually(2*time.Minute, func() error {
		out, err := n.Kubectl(ctx, "get", "nodecaches.wasme.io", node.Name, "-o",
			`jsonpath={.status.heartbeatTime}{" "}{range .status.modules[*]}{.digest}={.state}{" "}{end}`)
		if err != nil {
			return err
		}
		f := strings.Fields(out)
		if len(f) == 0 {
			return fmt.Errorf("NodeCache without a heartbeat: %q", out)
		}
		hb, err := time.Parse(time.RFC3339, f[0])
		if err != nil || !hb.After(started) {
			return fmt.Errorf("NodeCache heartbeat %q not after the new pod's start %s", f[0], started)
		}
		if !strings.Contains(out, "sha256:"+sumHex+"=Ready") {
			return fmt.Errorf("NodeCache does not list the module Ready: %q", out)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	cacheMetrics := "http://" + newCache.Status.PodIP + ":9979/metrics"
	if mods, err := metric(cacheMetrics, "wasme_cache_modules"); err != nil || mods < 1 {
		t.Errorf("the new cache pod holds %v modules (%v), want the one on the hostPath", mods, err)
	}
	if f, err := metric(cacheMetrics, "wasme_cache_fetches_total"); err != nil || f != 0 {
		t.Errorf("the new cache pod fetched %v times (%v), want 0: the module was on the hostPath", f, err)
	}
	if served1, err := metric(opMetrics, "wasme_moduleserver_requests_total"); err != nil || served1 != served0 {
		t.Errorf("the module server answered %v requests after the cache pod's restart (%v), want none", served1-served0, err)
	}
}
