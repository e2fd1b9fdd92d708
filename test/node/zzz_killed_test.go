package node_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"wasme.io/wasme/internal/testing/node"
)

// childEnv makes the test binary a test that dies half way: it starts a node, runs a pod,
// says "ready" and waits to be killed (TestMain).
const childEnv = "WASME_NODE_CHILD"

func childNode() int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n, err := node.Start(ctx, node.Options{HostPaths: hostPaths, Progress: os.Stderr})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child node:", err)
		return 1
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "left-behind", Namespace: "default"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "pause", Image: n.PauseImage}}},
	}
	if _, err := n.Clientset.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		fmt.Fprintln(os.Stderr, "child node:", err)
		return 1
	}
	for {
		p, err := n.Clientset.CoreV1().Pods("default").Get(ctx, pod.Name, metav1.GetOptions{})
		if err == nil && p.Status.Phase == corev1.PodRunning {
			break
		}
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "child node: the pod did not run")
			return 1
		}
		time.Sleep(200 * time.Millisecond)
	}
	fmt.Println("ready " + n.Dir)
	select {}
}

// TestKilledTestLeavesNothing kills (SIGKILL) a test binary whose node runs a pod: its shims,
// container, namespace, mounts, cgroups and changed sysctls stay behind. The next node's Start
// removes them, and once that node stops the host is as it was before the killed test.
func TestKilledTestLeavesNothing(t *testing.T) {
	if m := node.Missing(); len(m) > 0 {
		t.Fatalf("this machine cannot run the real-node tests; missing: %s", strings.Join(m, "; "))
	}
	if shared != nil {
		// Run alone: the shared node holds the machine's node lock.
		if err := shared.Stop(); err != nil {
			t.Fatal(err)
		}
		shared = nil
	}
	clean, err := snapshotHost()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "ready ") {
				lines <- strings.TrimPrefix(sc.Text(), "ready ")
				return
			}
		}
		close(lines)
	}()
	var dir string
	select {
	case d, ok := <-lines:
		if !ok {
			_ = cmd.Wait()
			t.Fatal("the child test exited before its node ran a pod")
		}
		dir = d
	case <-time.After(6 * time.Minute):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatal("the child test's node did not run its pod")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	// Without that the test would prove nothing: the kill left the node's pieces behind.
	killed, err := snapshotHost()
	if err != nil {
		t.Fatal(err)
	}
	if leftovers(clean, killed, dir) == "" {
		t.Fatal("killing the test left nothing behind; the cleanup is not exercised")
	}
	t.Logf("left behind by the killed test:%s", leftovers(clean, killed, dir))

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n, err := node.Start(ctx, node.Options{HostPaths: hostPaths})
	if err != nil {
		t.Fatal(err)
	}
	next := n.Dir
	if err := n.Stop(); err != nil {
		t.Fatal(err)
	}
	after, err := snapshotHost()
	if err != nil {
		t.Fatal(err)
	}
	if p := leftovers(clean, after, dir) + leftovers(clean, after, next); p != "" {
		t.Fatalf("after the killed test and the next node, left behind:%s", p)
	}
}
