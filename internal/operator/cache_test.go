package operator_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	wasmev1 "wasme.io/wasme/api/v1"
)

// reportNodeAt writes a node cache report that says Ready, with the given heartbeat.
func (cl *cluster) reportNodeAt(name string, heartbeat time.Time, digests ...string) {
	cl.t.Helper()
	nc := &wasmev1.NodeCache{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := cl.c.Get(cl.ctx, client.ObjectKeyFromObject(nc), nc); apierrors.IsNotFound(err) {
		if err := cl.c.Create(cl.ctx, nc); err != nil {
			cl.t.Fatal(err)
		}
		cl.t.Cleanup(func() { _ = env.Client.Delete(cl.ctx, nc) })
	}
	hb := metav1.NewTime(heartbeat)
	nc.Status.HeartbeatTime = &hb
	nc.Status.Conditions = []metav1.Condition{{Type: wasmev1.ReadyCondition, Status: metav1.ConditionTrue, Reason: "Serving", LastTransitionTime: metav1.Now()}}
	nc.Status.Modules = nil
	for _, d := range digests {
		nc.Status.Modules = append(nc.Status.Modules, wasmev1.NodeCacheModule{Digest: d, State: wasmev1.ModuleReady, LastTransitionTime: metav1.Now()})
	}
	if err := cl.c.Status().Update(cl.ctx, nc); err != nil {
		cl.t.Fatal(err)
	}
}

// A node cache that says Ready but stopped renewing its heartbeat (killed without stopping, a
// lost node whose Node object remains) stops counting after the grace period, so a rollout
// that waits for it goes on; one silent from the start never counts; the pending message
// names them.
func TestSilentNodeCacheStopsCounting(t *testing.T) {
	const grace = 4 * time.Second
	cl := setupWith(t, setupOptions{istiod: currentIstiod, resolveInterval: time.Hour, cacheGrace: grace})
	ns := "silent"
	cl.ensureNamespace(ns)
	ref := cl.push("filters/silent:v1", customHeader(t))
	cl.apply(deployment(ns, "app", map[string]string{"app": "app"}, nil))
	fd := newFD(ns, "silent", ref)
	cl.apply(fd)
	cl.eventually("the module digest", func() (bool, string) {
		fd = cl.fd(ns, "silent")
		return fd.Status.ModuleDigest != "", fmt.Sprintf("%+v", fd.Status)
	})

	// silent-2 is alive (renewing) but still fetching; silent-1 is alive and holds the module;
	// silent-3 said Ready long ago and then went quiet. silent-2 reports first, so the
	// rollout cannot complete before it counts.
	cl.reportNodeAt("silent-3", time.Now().Add(-10*time.Minute))
	cl.reportNodeAt("silent-2", time.Now())
	stop2 := cl.renewHeartbeat("silent-2")
	cl.reportNodeAt("silent-1", time.Now(), fd.Status.ModuleDigest)
	stop1 := cl.renewHeartbeat("silent-1")
	t.Cleanup(func() { stop1() })

	cl.eventually("a rollout waiting for the live node and not the silent one", func() (bool, string) {
		fd = cl.fd(ns, "silent")
		c := apimeta.FindStatusCondition(fd.Status.Conditions, wasmev1.ReadyCondition)
		return c != nil && c.Reason == wasmev1.CachePendingReason && fd.Status.CacheNodes == 2 && fd.Status.CachedNodes == 1 &&
			strings.Contains(c.Message, "cached on 1/2 nodes") && strings.Contains(c.Message, "silent for more than 4s: silent-3"), fmt.Sprintf("%+v", fd.Status)
	})

	// silent-2 dies without a word: after the grace period it no longer holds the rollout.
	died := stop2()
	var readyAt time.Time
	cl.eventually("Ready without the silent nodes", func() (bool, string) {
		fd = cl.fd(ns, "silent")
		ok, msg := ready(fd)
		readyAt = time.Now()
		return ok && fd.Status.CacheNodes == 1 && fd.Status.CachedNodes == 1, msg + fmt.Sprintf(" %+v", fd.Status)
	})
	// Heartbeats are stored to the second, so the node may stop counting up to a second early.
	if waited := readyAt.Sub(died); waited < grace-time.Second {
		t.Errorf("Ready %s after the last heartbeat, before the %s grace period", waited, grace)
	}
}

// renewHeartbeat renews a reported node's heartbeat every half second, as a live daemon does,
// until the returned stop is called; stop returns the time of the last renewal.
func (cl *cluster) renewHeartbeat(name string) (stop func() time.Time) {
	var mu sync.Mutex
	last := time.Now()
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-quit:
				return
			case <-time.After(500 * time.Millisecond):
			}
			now := time.Now()
			nc := &wasmev1.NodeCache{}
			if err := cl.c.Get(cl.ctx, client.ObjectKey{Name: name}, nc); err != nil {
				continue
			}
			hb := metav1.NewTime(now)
			nc.Status.HeartbeatTime = &hb
			if cl.c.Status().Update(cl.ctx, nc) == nil {
				mu.Lock()
				last = now
				mu.Unlock()
			}
		}
	}()
	var once sync.Once
	return func() time.Time {
		once.Do(func() { close(quit); <-done })
		mu.Lock()
		defer mu.Unlock()
		return last
	}
}
