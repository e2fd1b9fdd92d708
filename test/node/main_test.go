// Package node_test runs wasme on a real Kubernetes node (internal/testing/node): kubelet,
// containerd, runc, CNI and kube-proxy in a network namespace of their own. A machine that
// cannot run the node fails these tests with what is missing; they never skip.
package node_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"wasme.io/wasme/internal/testing/node"
)

var (
	shared     *node.Node
	sharedErr  error
	sharedOnce sync.Once
	// before is the host as it was before the shared node started (zz_teardown_test.go).
	before *hostState
)

// hostPaths are the host directories wasme's shipped manifests mount (the node cache).
var hostPaths = []string{"/var/local/lib/wasme-cache"}

// sharedNode starts the package's node once; TestTeardown, the last test, stops it.
func sharedNode(t *testing.T) *node.Node {
	t.Helper()
	sharedOnce.Do(func() {
		if m := node.Missing(); len(m) > 0 {
			sharedErr = fmt.Errorf("this machine cannot run the real-node tests; missing:\n  - %s", strings.Join(m, "\n  - "))
			return
		}
		before, sharedErr = snapshotHost()
		if sharedErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		shared, sharedErr = node.Start(ctx, node.Options{HostPaths: hostPaths, Progress: os.Stderr})
	})
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return shared
}

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(childNode())
	}
	code := m.Run()
	// A test that failed before TestTeardown ran still leaves nothing behind.
	if shared != nil {
		if err := shared.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stopping the node: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
