package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	wasmev1 "wasme.io/wasme/api/v1"
	wasmeac "wasme.io/wasme/api/v1/applyconfiguration/api/v1"
)

// fanoutCase is one way node caches learn what to hold: "before" is the design up to the
// ModuleSet (every cache watched every FilterDeployment, and the operator wrote status on
// every node report); "after" is today's (caches watch ModuleSet/cluster, reports within
// --cache-report-delay make one pass).
type fanoutCase struct {
	name        string
	reportDelay time.Duration
	watchFDs    bool
}

var fanoutCases = []fanoutCase{
	{name: "before: caches watch FilterDeployments, no report coalescing", reportDelay: -1, watchFDs: true},
	{name: "after: caches watch the ModuleSet, reports coalesced (1s)", reportDelay: time.Second},
}

// fanoutRow is row 7: one rollout of a new digest with FanoutNodes simulated node caches. A
// simulated cache is a watch and NodeCache writes, as a daemon does, without fetching bytes;
// it reports the module Ready 50-300 ms after it learns of it, like nodes that fill at
// different speeds. Counted: the FilterDeployment writes the operator makes and the watch
// events the caches receive from the moment the FilterDeployment is created until it is Ready.
func (c *clusterRows) fanoutRow(ctx context.Context) error {
	e := c.e
	n := c.cfg.FanoutNodes
	// The real daemons would count as nodes too; each reports Ready=False as it stops.
	e.stopNodes(0)
	ns := "fanout"
	if err := e.ensureNamespace(ctx, ns); err != nil {
		return err
	}
	var objs []client.Object
	for i := 0; i < c.cfg.FanoutWorkloads; i++ {
		name := fmt.Sprintf("app-%03d", i)
		objs = append(objs, workloadDeployment(ns, name, map[string]string{"app": name}))
	}
	if err := e.createParallel(ctx, objs); err != nil {
		return err
	}
	values := map[string]any{"nodes": n, "workloads": c.cfg.FanoutWorkloads}
	var summary [2]string
	var events, writes [2]int64
	for i, fc := range fanoutCases {
		e.step("row 7: one rollout with %d simulated node caches (%s)", n, fc.name)
		res, err := c.fanoutRollout(ctx, fc, ns, fmt.Sprintf("c%d", i))
		if err != nil {
			return fmt.Errorf("%s: %w", fc.name, err)
		}
		values[[]string{"before", "after"}[i]] = res
		events[i], writes[i] = res["node_watch_events"].(int64), int64(res["fd_writes"].(int))
		summary[i] = fmt.Sprintf("%d FilterDeployment writes, %d watch events at the nodes (%.1f per node), Ready in %s",
			writes[i], events[i], float64(events[i])/float64(n), human(res["apply_ready_ms"].(float64)))
	}
	c.rep.Rows = append(c.rep.Rows, Row{
		Row: 7, Name: "node fan-out of one rollout", Case: fmt.Sprintf("%d node caches, %d workloads", n, c.cfg.FanoutWorkloads),
		Wasme:      summary[1],
		Comparison: summary[0],
		Ratio:      fmt.Sprintf("%.1fx fewer events at the nodes, %.1fx fewer status writes", float64(events[0])/float64(max(events[1], 1)), float64(writes[0])/float64(max(writes[1], 1))),
		Note: "simulated node caches (a watch and NodeCache writes each, no daemons); before = the caches' watch on every FilterDeployment " +
			"and the operator at --cache-report-delay=-1, measured in the same run; FilterDeployment writes counted at the operator's rest.Config",
		Values: values,
	})
	return nil
}

// fanoutRollout runs one case: the simulated caches, an operator started with the case's
// report delay, one FilterDeployment of a new digest over every workload of ns.
func (c *clusterRows) fanoutRollout(ctx context.Context, fc fanoutCase, ns, tag string) (map[string]any, error) {
	e := c.e
	if err := e.startOperatorWith(ctx, time.Hour, fc.reportDelay); err != nil {
		return nil, err
	}
	ref, err := e.pushModule(ctx, "bench/fanout:"+tag, uniqueModule(e.module))
	if err != nil {
		return nil, err
	}
	simCtx, stopSims := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stopSims()
		wg.Wait()
	}()
	var counting atomic.Bool
	var events, cacheWrites atomic.Int64
	errs := make(chan error, c.cfg.FanoutNodes)
	for i := 0; i < c.cfg.FanoutNodes; i++ {
		s := &simCache{e: e, tag: tag, name: fmt.Sprintf("sim-%s-%03d", tag, i), watchFDs: fc.watchFDs, counting: &counting, events: &events, writes: &cacheWrites}
		if err := s.report(simCtx); err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.run(simCtx); err != nil && simCtx.Err() == nil {
				errs <- fmt.Errorf("simulated cache %s: %w", s.name, err)
			}
		}()
	}
	// The operator counts a cache once its informer has the NodeCache; give it a moment, then
	// start counting from the creation of the FilterDeployment.
	time.Sleep(500 * time.Millisecond)
	e.apiCalls.take()
	counting.Store(true)
	fd := filterDeployment(ns, "fanout-"+tag, ref, "fanout-"+tag)
	d, err := e.applyAndWait(ctx, []*wasmev1.FilterDeployment{fd}, []int{c.cfg.FanoutWorkloads}, 5*time.Minute)
	if err != nil {
		return nil, err
	}
	// Let the last status write land before counting.
	time.Sleep(300 * time.Millisecond)
	counting.Store(false)
	calls := e.apiCalls.take()
	select {
	case err := <-errs:
		return nil, err
	default:
	}
	fdWrites := 0
	for k, v := range calls {
		if isWrite(k) && (k == "patch filterdeployments/status" || k == "update filterdeployments/status" || k == "apply filterdeployments/status") {
			fdWrites += v
		}
	}
	if err := e.deleteAndWait(ctx, []*wasmev1.FilterDeployment{fd}, 5*time.Minute); err != nil {
		return nil, err
	}
	stopSims()
	wg.Wait()
	if err := e.admin.DeleteAllOf(ctx, &wasmev1.NodeCache{}, client.MatchingLabels{simLabel: tag}); err != nil {
		return nil, err
	}
	return map[string]any{
		"apply_ready_ms": ms(d), "fd_writes": fdWrites, "node_watch_events": events.Load(),
		"nodecache_writes": cacheWrites.Load(), "operator_writes": jsonString(writesOf(calls)),
	}, nil
}

func writesOf(calls map[string]int) map[string]int {
	w, _ := writesOnly(calls)
	return w
}

const simLabel = "bench.wasme.io/simulated-cache"

// simCache is one simulated node cache.
type simCache struct {
	e        *env
	tag      string
	name     string
	watchFDs bool
	created  bool

	counting       *atomic.Bool
	events, writes *atomic.Int64

	held  []string            // digests reported Ready
	needs map[string][]string // FilterDeployment -> its digests (watchFDs)
}

// run watches what the case's caches watch and reports every newly needed digest Ready after
// a simulated fetch; it renews the heartbeat as the daemon does.
func (s *simCache) run(ctx context.Context) error {
	var list client.ObjectList = &wasmev1.ModuleSetList{}
	var opts []client.ListOption
	if s.watchFDs {
		list = &wasmev1.FilterDeploymentList{}
	} else {
		opts = append(opts, client.MatchingFields{"metadata.name": wasmev1.ModuleSetName})
	}
	w, err := s.e.admin.Watch(ctx, list, opts...)
	if err != nil {
		return err
	}
	defer w.Stop()
	s.needs = map[string][]string{}
	heartbeat := time.NewTicker(20 * time.Second)
	defer heartbeat.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-heartbeat.C:
			if err := s.report(ctx); err != nil {
				return err
			}
		case ev, ok := <-w.ResultChan():
			if !ok {
				return fmt.Errorf("the watch closed")
			}
			if s.counting.Load() {
				s.events.Add(1)
			}
			var needed []string
			switch o := ev.Object.(type) {
			case *wasmev1.FilterDeployment:
				key := o.Namespace + "/" + o.Name
				if ev.Type == watch.Deleted {
					delete(s.needs, key)
				} else {
					s.needs[key] = wasmev1.NeededDigests([]wasmev1.FilterDeployment{*o})
				}
				for _, ds := range s.needs {
					needed = append(needed, ds...)
				}
			case *wasmev1.ModuleSet:
				needed = o.Spec.Digests
			default:
				continue
			}
			var fresh bool
			for _, d := range needed {
				if !slices.Contains(s.held, d) {
					s.held, fresh = append(s.held, d), true
				}
			}
			if !fresh {
				continue
			}
			// The fetch: nodes fill at different speeds.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Duration(50+rand.IntN(250)) * time.Millisecond):
			}
			if err := s.report(ctx); err != nil {
				return err
			}
		}
	}
}

// report writes the NodeCache as the daemon does: Ready, a fresh heartbeat, the held modules.
func (s *simCache) report(ctx context.Context) error {
	if !s.created {
		if err := s.e.admin.Apply(ctx, wasmeac.NodeCache(s.name).WithLabels(map[string]string{simLabel: s.tag}),
			client.FieldOwner("bench-sim"), client.ForceOwnership); err != nil {
			return err
		}
		s.created = true
		s.writes.Add(1)
	}
	now := metav1.Now()
	st := wasmeac.NodeCacheStatus().WithHeartbeatTime(now).WithConditions(metav1ac.Condition().
		WithType(wasmev1.ReadyCondition).WithStatus(metav1.ConditionTrue).WithReason("Serving").WithMessage("simulated").WithLastTransitionTime(now))
	for _, d := range s.held {
		st.WithModules(wasmeac.NodeCacheModule().WithDigest(d).WithState(wasmev1.ModuleReady).WithSize(1).WithLastTransitionTime(now))
	}
	if err := s.e.admin.Status().Apply(ctx, wasmeac.NodeCache(s.name).WithStatus(st),
		client.FieldOwner("bench-sim"), client.ForceOwnership); err != nil {
		return err
	}
	s.writes.Add(1)
	return nil
}
