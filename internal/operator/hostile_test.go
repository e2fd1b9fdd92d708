package operator_test

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/testing/wasmbuild"
	"wasme.io/wasme/internal/validation"
)

// shippedMemoryLimit is the wasme-operator container's memory limit in config/manager.
const shippedMemoryLimit = 1536 << 20

// TestHostileModules applies FilterDeployments of the hostile modules of issue 11 (rows 1-3)
// next to a good one, through the real operator (its validation children are this test
// binary, as they are the wasme binary in production): each is Failed with the limit it broke
// in its status, no EnvoyFilter is written for it, the good one becomes Ready, the operator
// keeps reconciling afterwards, and its memory stays far under its container limit.
func TestHostileModules(t *testing.T) {
	budget := 3 * time.Second
	cl := setupWith(t, setupOptions{istiod: currentIstiod, resolveInterval: time.Hour,
		validation: validation.Limits{Timeout: budget}})
	stopRSS := sampleRSS(t)

	cases := []struct {
		name    string
		module  []byte
		message string // a regexp the Ready condition's message matches
	}{
		{"no-memory-tick-trap", wasmbuild.NoMemoryTickTrap(), `exports no memory named "memory"`},
		{"no-memory-host-call", wasmbuild.NoMemoryHostCall(), `exports no memory named "memory"`},
		{"start-loop", wasmbuild.StartLoop(), `did not return within 3s|time budget of 3s|CPU limit of 3s`},
		{"shared-data-flood", wasmbuild.SharedDataFlood(1024, 1024), `host limit on shared data \(16 MiB per VM\)`},
		{"queue-flood", wasmbuild.QueueFlood(20000), `host limit on shared queue length \(10000 items\)`},
		{"huge-table", wasmbuild.HugeTable(1 << 27), `host limit on table size \(1048576 entries\)`},
	}
	type applied struct {
		ns      string
		message *regexp.Regexp
	}
	var hostile []applied
	start := time.Now()
	for _, tc := range cases {
		ref := cl.push("hostile/"+tc.name+":v1", tc.module)
		ns := env.Namespace(t)
		cl.apply(deployment(ns, "app", map[string]string{"app": "app"}, nil))
		cl.apply(newFD(ns, "f", ref))
		hostile = append(hostile, applied{ns, regexp.MustCompile(tc.message)})
	}
	// The good ones are small too: a Go filter's compile alone can outlast a 3 s budget on a
	// loaded machine (the default budget is 10 s).
	good := newFD(env.Namespace(t), "f", cl.push("filters/minimal:v1", wasmbuild.Minimal()))
	cl.apply(deployment(good.Namespace, "app", map[string]string{"app": "app"}, nil))
	cl.apply(good)

	for i, h := range hostile {
		cl.eventually(cases[i].name+" to fail", func() (bool, string) {
			got := cl.fd(h.ns, "f")
			c := apimeta.FindStatusCondition(got.Status.Conditions, wasmev1.ReadyCondition)
			return c != nil && c.Status == metav1.ConditionFalse && c.Reason == wasmev1.ImageFailedReason && h.message.MatchString(c.Message),
				fmt.Sprintf("%+v", got.Status)
		})
		if efs := cl.envoyFilters(h.ns); len(efs) != 0 {
			t.Errorf("%s: EnvoyFilters written: %v", cases[i].name, keys(efs))
		}
		if a := cl.deployment(h.ns, "app").Spec.Template.Annotations; len(a) != 0 {
			t.Errorf("%s: workload annotated: %v", cases[i].name, a)
		}
	}
	t.Logf("all %d hostile FilterDeployments Failed %v after they were applied", len(hostile), time.Since(start).Round(100*time.Millisecond))
	cl.waitReady(good)

	// Still reconciling: a FilterDeployment applied after them all goes through.
	late := newFD(env.Namespace(t), "f", cl.push("filters/minimal:v2", wasmbuild.Minimal()))
	cl.apply(deployment(late.Namespace, "app", map[string]string{"app": "app"}, nil))
	cl.apply(late)
	cl.waitReady(late)

	peak := stopRSS()
	t.Logf("operator (this test process) peak RSS while validating the hostile modules: %d MiB", peak>>20)
	// The shared-data flood alone held about 1 GiB in the operator before validation moved
	// to a child; now none of it lands here.
	if peak > shippedMemoryLimit/2 {
		t.Errorf("peak RSS %d MiB, more than half the shipped limit of %d MiB", peak>>20, shippedMemoryLimit>>20)
	}
}

// sampleRSS samples this process's resident set every 50 ms until the returned function is
// called, which returns the highest sample.
func sampleRSS(t *testing.T) func() uint64 {
	var (
		mu   sync.Mutex
		peak uint64
		done = make(chan struct{})
		wg   sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			if rss, err := residentBytes(); err == nil {
				mu.Lock()
				peak = max(peak, rss)
				mu.Unlock()
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	var once sync.Once
	stop := func() uint64 {
		once.Do(func() { close(done); wg.Wait() })
		mu.Lock()
		defer mu.Unlock()
		return peak
	}
	t.Cleanup(func() { stop() })
	return stop
}

func residentBytes() (uint64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kib, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kib << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS")
}
