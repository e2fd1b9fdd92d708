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

	// silent-1 holds the module; silent-2 is alive (renewing) but still fetching; silent-3
	// said Ready long ago and then went quiet.
	cl.reportNodeAt("silent-1", time.Now(), fd.Status.ModuleDigest)
	cl.reportNodeAt("silent-3", time.Now().Add(-10*time.Minute))
	var mu sync.Mutex
	lastRenewal := time.Now()
	stopRenewing := make(chan struct{})
	renewDone := make(chan struct{})
	cl.reportNodeAt("silent-2", lastRenewal)
	go func() {
		defer close(renewDone)
		for {
			select {
			case <-stopRenewing:
				return
			case <-time.After(500 * time.Millisecond):
			}
			now := time.Now()
			nc := &wasmev1.NodeCache{}
			if err := cl.c.Get(cl.ctx, client.ObjectKey{Name: "silent-2"}, nc); err != nil {
				continue
			}
			hb := metav1.NewTime(now)
			nc.Status.HeartbeatTime = &hb
			if cl.c.Status().Update(cl.ctx, nc) == nil {
				mu.Lock()
				lastRenewal = now
				mu.Unlock()
			}
		}
	}()

	cl.eventually("a rollout waiting for the live node and not the silent one", func() (bool, string) {
		fd = cl.fd(ns, "silent")
		c := apimeta.FindStatusCondition(fd.Status.Conditions, wasmev1.ReadyCondition)
		return c != nil && c.Reason == wasmev1.CachePendingReason && fd.Status.CacheNodes == 2 && fd.Status.CachedNodes == 1 &&
			strings.Contains(c.Message, "cached on 1/2 nodes") && strings.Contains(c.Message, "silent for more than 4s: silent-3"), fmt.Sprintf("%+v", fd.Status)
	})

	// silent-2 dies without a word: after the grace period it no longer holds the rollout.
	close(stopRenewing)
	<-renewDone
	mu.Lock()
	died := lastRenewal
	mu.Unlock()
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
