package node_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"wasme.io/wasme/internal/testing/node"
	"wasme.io/wasme/internal/testing/testenv"
	"wasme.io/wasme/internal/testing/tools"
)

var installed bool

// install installs wasme as a user does, once per run: the image from `make image` (hack/image)
// pushed to the node's registry, `kubectl apply --server-side -f deploy/crds.yaml`, then
// deploy/wasme.yaml through a kustomize overlay. The overlay changes the image and, because
// the test registry is on a private address, the operator's --allowed-registries. The caches
// reach the operator by its Service's name (--operator-url), through the node's CoreDNS.
func install(t *testing.T, n *node.Node) {
	t.Helper()
	if installed {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	root := tools.RepoRoot()
	dir := t.TempDir()
	name, digest := wasmeImage(t, n)
	installCRDs(ctx, t, n, filepath.Join(root, "deploy", "crds.yaml"))

	manifest, err := os.ReadFile(filepath.Join(root, "deploy", "wasme.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(dir, "overlay")
	if err := os.MkdirAll(overlay, 0o755); err != nil {
		t.Fatal(err)
	}
	kustomization := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- wasme.yaml
images:
- name: wasme
  newName: %s
  digest: %s
patches:
- target: {kind: Deployment, name: wasme-operator}
  patch: |
    - op: add
      path: /spec/template/spec/containers/0/args/-
      value: --allowed-registries=%s
`, name, digest, n.RegistryHost)
	for f, b := range map[string][]byte{"wasme.yaml": manifest, "kustomization.yaml": []byte(kustomization)} {
		if err := os.WriteFile(filepath.Join(overlay, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := n.Kubectl(ctx, "apply", "--server-side", "-k", overlay); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"deployment/wasme-operator", "daemonset/wasme-cache"} {
		if _, err := n.Kubectl(ctx, "-n", "wasme", "rollout", "status", w, "--timeout=5m"); err != nil {
			t.Fatalf("%v\npods:%s%s", err, podStates(n.Clientset, "wasme"), n.LogTails())
		}
	}
	installed = true
}

var wasmeImageName, wasmeImageDigest string

// wasmeImage builds and pushes, once per run, the image `make image` (hack/image) builds to
// the node's registry and returns it as the node pulls it: repository and digest.
func wasmeImage(t *testing.T, n *node.Node) (name, digest string) {
	t.Helper()
	if wasmeImageName != "" {
		return wasmeImageName, wasmeImageDigest
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	refFile := filepath.Join(t.TempDir(), "wasme-image.ref")
	cmd := exec.CommandContext(ctx, "go", "run", "./hack/image", "-platforms", "linux/"+runtime.GOARCH,
		"-push", n.Registry.Host+"/wasme:test", "-ref-file", refFile)
	cmd.Dir = tools.RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make image (go run ./hack/image): %v\n%s", err, out)
	}
	ref, err := os.ReadFile(refFile)
	if err != nil {
		t.Fatal(err)
	}
	image := n.NodeRef(strings.TrimSpace(string(ref)))
	name, digest, ok := strings.Cut(image, "@")
	if !ok {
		t.Fatalf("hack/image wrote %q, want a digest-pinned reference", ref)
	}
	wasmeImageName, wasmeImageDigest = name, digest
	return name, digest
}

// installCRDs applies the given CRD files and Istio's (the operator watches EnvoyFilters)
// and waits until every CRD is served.
func installCRDs(ctx context.Context, t *testing.T, n *node.Node, files ...string) {
	t.Helper()
	istioCRDs, err := testenv.IstioCRDs()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range append(files, istioCRDs) {
		if _, err := n.Kubectl(ctx, "apply", "--server-side", "-f", f); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := n.Kubectl(ctx, "wait", "--for=condition=Established", "--timeout=2m", "crd", "--all"); err != nil {
		t.Fatal(err)
	}
}

// wasmeProcess finds the host pid of the container process running `/wasme <verb>`.
func wasmeProcess(t *testing.T, verb string) int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.HasPrefix(cmd, []byte("/wasme\x00"+verb+"\x00")) {
			return pid
		}
	}
	t.Fatalf("no process runs /wasme %s", verb)
	return 0
}

// procIdentity is the real and effective uid of a process and whether its root is mounted read-only.
func procIdentity(t *testing.T, pid int) (uids string, rootRO bool) {
	t.Helper()
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(st), "\n") {
		if strings.HasPrefix(l, "Uid:") {
			uids = strings.Join(strings.Fields(l)[1:], " ")
		}
	}
	mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mi), "\n") {
		f := strings.Fields(l)
		if len(f) > 5 && f[4] == "/" {
			rootRO = strings.HasPrefix(f[5], "ro,") || f[5] == "ro"
		}
	}
	return uids, rootRO
}

// TestInstall installs wasme from deploy/ with the image make image builds: the operator
// Deployment's pod and the cache DaemonSet's pod are Ready through their own probes, run as
// uid 65532 with a read-only root filesystem, the operator holds the leader lease, and the
// cache reported for the node in its NodeCache with its own (pod-bound) token.
func TestInstall(t *testing.T) {
	n := sharedNode(t)
	install(t, n)
	ctx := context.Background()

	out, err := n.Kubectl(ctx, "get", "all", "-n", "wasme")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl get all -n wasme:\n%s", out)
	var operatorPods, cachePods int
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 3 || !strings.HasPrefix(f[0], "pod/") {
			continue
		}
		ready := strings.Split(f[1], "/")
		if len(ready) != 2 || ready[0] != ready[1] || f[2] != "Running" {
			t.Errorf("pod not ready: %s", l)
		}
		switch {
		case strings.HasPrefix(f[0], "pod/wasme-operator-"):
			operatorPods++
		case strings.HasPrefix(f[0], "pod/wasme-cache-"):
			cachePods++
		}
	}
	if operatorPods != 1 || cachePods != 1 {
		t.Errorf("kubectl get all -n wasme shows %d operator and %d cache pods, want 1 and 1 (one node)", operatorPods, cachePods)
	}
	for _, want := range []string{"daemonset.apps/wasme-cache", "deployment.apps/wasme-operator", "service/wasme-operator"} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl get all -n wasme lacks %s", want)
		}
	}

	for _, verb := range []string{"operator", "cache"} {
		uids, ro := procIdentity(t, wasmeProcess(t, verb))
		if uids != "65532 65532 65532 65532" {
			t.Errorf("wasme %s runs with uids %q, want 65532 (real, effective, saved, fs)", verb, uids)
		}
		if !ro {
			t.Errorf("wasme %s: the root filesystem is writable", verb)
		}
	}

	all, err := n.Clientset.CoreV1().Pods("wasme").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range all.Items {
		// Each pod authenticates with its own ServiceAccount's projected token.
		want := "wasme-" + strings.TrimPrefix(p.Labels["app"], "wasme-")
		token := false
		for _, v := range p.Spec.Volumes {
			token = token || (v.Projected != nil && strings.HasPrefix(v.Name, "kube-api-access-"))
		}
		if p.Spec.ServiceAccountName != want || !token {
			t.Errorf("pod %s runs as ServiceAccount %q (want %q), projected token volume %v", p.Name, p.Spec.ServiceAccountName, want, token)
		}
	}
	pods, err := n.Clientset.CoreV1().Pods("wasme").List(ctx, metav1.ListOptions{LabelSelector: "app=wasme-operator"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("operator pods: %v %d", err, len(pods.Items))
	}
	checkLeaderAndReport(ctx, t, n, pods.Items[0].Name)
	st, err := os.Stat("/var/local/lib/wasme-cache")
	if err != nil {
		t.Fatal(err)
	}
	if ownerOf(st) != "65532:65532" || st.Mode().Perm() != 0o755 {
		t.Errorf("the cache's hostPath is %s mode %o, want 65532:65532 mode 755 (the init step)", ownerOf(st), st.Mode().Perm())
	}
}

// checkLeaderAndReport checks that operatorPod holds the leader lease and that the node's
// NodeCache appears. The NodeCache can only be written with a token bound to a cache pod on
// this node (the shipped ValidatingAdmissionPolicy): its existence shows the pod used its own
// token and reached the operator.
func checkLeaderAndReport(ctx context.Context, t *testing.T, n *node.Node, operatorPod string) {
	t.Helper()
	if err := eventually(2*time.Minute, func() error {
		lease, err := n.Clientset.CoordinationV1().Leases("wasme").Get(ctx, "wasme-operator.wasme.io", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if h := lease.Spec.HolderIdentity; h == nil || operatorPod == "" || !strings.HasPrefix(*h, operatorPod) {
			return fmt.Errorf("lease held by %v, want the operator pod %s", h, operatorPod)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	if err := eventually(2*time.Minute, func() error {
		_, err := n.Kubectl(ctx, "get", "nodecaches.wasme.io", node.Name)
		return err
	}); err != nil {
		t.Error(err)
	}
}

func eventually(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func ownerOf(fi os.FileInfo) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "unknown"
	}
	return fmt.Sprintf("%d:%d", st.Uid, st.Gid)
}
