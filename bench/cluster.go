package bench

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/testing/proc"
	"wasme.io/wasme/internal/testing/testenv"
)

// clusterRows measures rows 1-3 on one API server, registry and set of node caches.
type clusterRows struct {
	e       *env
	cfg     Config
	rep     *Report
	current int // the row being measured, for error reports

	baseRef string
	keeper  *wasmev1.FilterDeployment
	kept    []*wasmev1.FilterDeployment // the last apply case's FilterDeployments, left applied
	keptN   int                         // workloads they select
}

const (
	keepNamespace = "bench-keep"
	// originalApplyNote is the original's apply→Ready, by construction (section 3.5 of the
	// state of the art) and as the seed article shows it.
	originalApply = "original: >= 60 s (kubelet ConfigMap refresh ~1 min + 1-2 s polling); seed article: ~30 s create->EnvoyFilter"
	articleMS     = 30000.0
)

func (c *clusterRows) run(ctx context.Context) error {
	e := c.e
	c.current = 1
	if err := e.startOperator(ctx, time.Hour); err != nil {
		return err
	}
	if err := e.startNodes(ctx, c.cfg.Nodes); err != nil {
		return err
	}
	var err error
	if c.baseRef, err = e.pushModule(ctx, "bench/custom-header:v1", e.module); err != nil {
		return err
	}
	// A FilterDeployment that selects nothing keeps the module needed, so every node caches it
	// and keeps it: "module already cached" for the warm cases.
	if err := e.ensureNamespace(ctx, keepNamespace); err != nil {
		return err
	}
	c.keeper = filterDeployment(keepNamespace, "keep", c.baseRef, "keep")
	if err := e.admin.Create(ctx, c.keeper); err != nil {
		return err
	}
	if err := c.waitCached(ctx, len(e.nodes)); err != nil {
		return err
	}
	if c.cfg.wants(1) || c.cfg.wants(2) {
		if err := c.applyRows(ctx); err != nil {
			return err
		}
	}
	if c.cfg.wants(1) || c.cfg.wants(3) {
		c.current = 3
		if err := c.coldRows(ctx); err != nil {
			return err
		}
	}
	if c.cfg.wants(2) {
		c.current = 2
		if err := c.steadyRow(ctx); err != nil {
			return err
		}
		if err := c.memoryRows(ctx); err != nil {
			return err
		}
	}
	// Last: it stops the real node caches.
	if c.cfg.wants(7) {
		c.current = 7
		if err := c.fanoutRow(ctx); err != nil {
			return err
		}
	}
	return nil
}

// waitCached waits until the keeper's module is on n ready nodes.
func (c *clusterRows) waitCached(ctx context.Context, n int) error {
	return c.e.poll(ctx, 2*time.Minute, fmt.Sprintf("the module cached on %d nodes", n), func() (bool, error) {
		fd := &wasmev1.FilterDeployment{}
		if err := c.e.admin.Get(ctx, client.ObjectKeyFromObject(c.keeper), fd); err != nil {
			return false, err
		}
		return fd.Status.ModuleDigest != "" && fd.Status.CacheNodes == int32(n) && fd.Status.CachedNodes == int32(n), nil
	})
}

func (c *clusterRows) applyRows(ctx context.Context) error {
	e := c.e
	e.step("creating the workloads of row 1")
	var objs []client.Object
	for _, ac := range c.cfg.Apply {
		for i := 0; i < ac.Namespaces; i++ {
			ns := fmt.Sprintf("apply-%d-%d", ac.Workloads, i)
			if err := e.ensureNamespace(ctx, ns); err != nil {
				return err
			}
			for j := 0; j < ac.Workloads/ac.Namespaces; j++ {
				name := fmt.Sprintf("app-%04d", j)
				objs = append(objs, workloadDeployment(ns, name, map[string]string{"app": name}))
			}
		}
	}
	if err := e.createParallel(ctx, objs); err != nil {
		return err
	}
	for ci, ac := range c.cfg.Apply {
		last := ci == len(c.cfg.Apply)-1
		per := ac.Workloads / ac.Namespaces
		var durs []float64
		var rollout, deletion map[string]int
		e.step("row 1: apply->Ready, %d workloads in %d namespace(s), %d runs", ac.Workloads, ac.Namespaces, ac.Runs)
		for r := 0; r < ac.Runs; r++ {
			run := fmt.Sprintf("apply-%d-run-%d", ac.Workloads, r)
			var fds []*wasmev1.FilterDeployment
			var want []int
			for i := 0; i < ac.Namespaces; i++ {
				fds = append(fds, filterDeployment(fmt.Sprintf("apply-%d-%d", ac.Workloads, i), "custom-header", c.baseRef, run))
				want = append(want, per)
			}
			e.apiCalls.take()
			d, err := e.applyAndWait(ctx, fds, want, 5*time.Minute)
			if err != nil {
				return fmt.Errorf("%d workloads, run %d: %w", ac.Workloads, r, err)
			}
			// Let the last status write and event land before counting.
			time.Sleep(300 * time.Millisecond)
			rollout = e.apiCalls.take()
			durs = append(durs, ms(d))
			if last && r == ac.Runs-1 {
				c.kept, c.keptN = fds, ac.Workloads
				break
			}
			if err := e.deleteAndWait(ctx, fds, 5*time.Minute); err != nil {
				return err
			}
			time.Sleep(200 * time.Millisecond)
			deletion = e.apiCalls.take()
		}
		s := summarize(durs)
		caseName := fmt.Sprintf("%d workloads", ac.Workloads)
		if ac.Namespaces > 1 {
			caseName += fmt.Sprintf(" (%d ns x %d, one FD each)", ac.Namespaces, per)
		}
		if c.cfg.wants(1) {
			c.rep.Rows = append(c.rep.Rows, Row{
				Row: 1, Name: "apply->Ready, module cached", Case: caseName,
				Wasme:      fmt.Sprintf("median %s, p95 %s (n=%d)", human(s.Median), human(s.P95), s.N),
				Comparison: originalApply,
				Ratio:      faster(articleMS / s.Median),
				Note:       "Ready = every FilterDeployment Ready for its generation with all workloads Succeeded (EnvoyFilter written, workload annotated), seen through a watch; pod restarts (no kubelet here) are excluded, as in the article's figure",
				Values:     map[string]any{"runs_ms": durs, "median_ms": s.Median, "p95_ms": s.P95, "min_ms": s.Min, "max_ms": s.Max, "workloads": ac.Workloads, "namespaces": ac.Namespaces},
			})
		}
		if c.cfg.wants(2) {
			c.rep.Rows = append(c.rep.Rows, writesRow(caseName, rollout, deletion))
		}
	}
	return nil
}

// writesRow is row 2's API cost of one rollout and of one deletion.
func writesRow(caseName string, rollout, deletion map[string]int) Row {
	w, wTotal := writesOnly(rollout)
	d, dTotal := writesOnly(deletion)
	reads := 0
	for k, n := range rollout {
		if !isWrite(k) {
			reads += n
		}
	}
	note := "rollout writes " + jsonString(w)
	if deletion != nil {
		note += "; deletion writes " + jsonString(d)
	}
	return Row{
		Row: 2, Name: "API writes per rollout", Case: caseName,
		Wasme:      fmt.Sprintf("%d writes (%d reads)", wTotal, reads),
		Comparison: "original: an update + an EnvoyFilter per workload, plus one Event per image per node every 2 s while waiting (by construction)",
		Note:       note + "; counted at the operator's rest.Config (client side), events included; tokenreviews are the node caches' module fetches being authenticated",
		Values:     map[string]any{"rollout": rollout, "rollout_writes": wTotal, "deletion": deletion, "deletion_writes": dTotal, "rollout_reads": reads},
	}
}

func writesOnly(m map[string]int) (map[string]int, int) {
	out, total := map[string]int{}, 0
	for k, n := range m {
		if isWrite(k) {
			out[k] = n
			total += n
		}
	}
	return out, total
}

// coldRows measures a rollout of a digest no node holds, on Nodes nodes (row 1 cold, row 3)
// and on each larger EgressNodes count (row 3).
func (c *clusterRows) coldRows(ctx context.Context) error {
	e := c.e
	ns := fmt.Sprintf("apply-%d-0", c.cfg.Apply[0].Workloads)
	workloads := c.cfg.Apply[0].Workloads / c.cfg.Apply[0].Namespaces
	rollout := func(tag string) (time.Duration, map[string]int, int64, int64, int, error) {
		module := uniqueModule(e.module)
		ref, err := e.pushModule(ctx, "bench/cold:"+tag, module)
		if err != nil {
			return 0, nil, 0, 0, 0, err
		}
		e.proxy.take()
		e.nodeBytes.Store(0)
		fds := []*wasmev1.FilterDeployment{filterDeployment(ns, "cold", ref, "cold-"+tag)}
		d, err := e.applyAndWait(ctx, fds, []int{workloads}, 5*time.Minute)
		if err != nil {
			return 0, nil, 0, 0, 0, err
		}
		reqs, bytes := e.proxy.take()
		nodeBytes := e.nodeBytes.Load()
		if err := e.deleteAndWait(ctx, fds, 5*time.Minute); err != nil {
			return 0, nil, 0, 0, 0, err
		}
		return d, reqs, bytes, nodeBytes, len(module), nil
	}
	egress := func(nodes int, reqs map[string]int, bytes, nodeBytes int64, size int) Row {
		total := 0
		for _, n := range reqs {
			total += n
		}
		pulls := reqs["GET blobs"] / 2 // a pull reads the config blob and the module layer
		return Row{
			Row: 3, Name: "registry egress per rollout", Case: fmt.Sprintf("new digest, %d nodes", nodes),
			Wasme: fmt.Sprintf("%d requests, %s (%d pull)", total, kib(float64(bytes)), pulls),
			Comparison: fmt.Sprintf("original wasme: %d pulls, ~%s (one per node); Istio WasmPlugin: one pull per pod (by construction)",
				nodes, kib(float64(nodes)*float64(bytes))),
			Ratio: fmt.Sprintf("%.0fx fewer bytes than per-node", float64(nodes)*float64(bytes)/float64(max(bytes, 1))),
			Note: fmt.Sprintf("counted at a reverse proxy in front of the registry; requests %s; module %s; the nodes then read %s from the operator's module server (%.1f module copies)",
				jsonString(reqs), kib(float64(size)), kib(float64(nodeBytes)), float64(nodeBytes)/float64(size)),
			Values: map[string]any{"nodes": nodes, "requests": reqs, "requests_total": total, "registry_bytes": bytes, "module_bytes": size, "node_fetch_bytes": nodeBytes},
		}
	}

	e.step("row 1/3: cold-cache rollouts of a new digest on %d nodes, %d runs", len(e.nodes), c.cfg.ColdRuns)
	var durs []float64
	var first Row
	for r := 0; r < c.cfg.ColdRuns; r++ {
		d, reqs, bytes, nodeBytes, size, err := rollout(fmt.Sprintf("n%d-r%d", len(e.nodes), r))
		if err != nil {
			return fmt.Errorf("cold rollout %d: %w", r, err)
		}
		durs = append(durs, ms(d))
		if r == 0 {
			first = egress(len(e.nodes), reqs, bytes, nodeBytes, size)
		}
	}
	s := summarize(durs)
	if c.cfg.wants(1) {
		c.rep.Rows = append(c.rep.Rows, Row{
			Row: 1, Name: "apply->Ready, cold node caches", Case: fmt.Sprintf("%d workloads, %d nodes, new digest", workloads, len(e.nodes)),
			Wasme:      fmt.Sprintf("median %s, p95 %s (n=%d)", human(s.Median), human(s.P95), s.N),
			Comparison: originalApply,
			Ratio:      faster(articleMS / s.Median),
			Note:       "includes the registry pull, validation of the module in wasme's proxy-wasm host, and every node cache fetching, verifying and reporting it",
			Values:     map[string]any{"runs_ms": durs, "median_ms": s.Median, "p95_ms": s.P95, "min_ms": s.Min, "max_ms": s.Max, "nodes": len(e.nodes)},
		})
	}
	if c.cfg.wants(3) {
		c.rep.Rows = append(c.rep.Rows, first)
		for _, n := range c.cfg.EgressNodes {
			if n <= len(e.nodes) {
				continue
			}
			e.step("row 3: a new digest on %d nodes", n)
			if err := e.startNodes(ctx, n); err != nil {
				return err
			}
			if err := c.waitCached(ctx, n); err != nil {
				return err
			}
			d, reqs, bytes, nodeBytes, size, err := rollout(fmt.Sprintf("n%d", n))
			if err != nil {
				return err
			}
			row := egress(n, reqs, bytes, nodeBytes, size)
			row.Values["apply_ready_ms"] = ms(d)
			row.Note += fmt.Sprintf("; apply->Ready %s", human(ms(d)))
			c.rep.Rows = append(c.rep.Rows, row)
			e.stopNodes(c.cfg.Nodes)
		}
	}
	return nil
}

// reconciles is the in-process operators' FilterDeployment reconcile count so far.
func reconciles() float64 {
	mfs, err := ctrlmetrics.Registry.Gather()
	if err != nil {
		return 0
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "controller_runtime_reconcile_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "controller" && l.GetValue() == "filterdeployment" {
					total += m.GetCounter().GetValue()
				}
			}
		}
	}
	return total
}

// steadyRow restarts the operator over the applied FilterDeployments with a short resolve
// interval and counts its writes: a full resync plus periodic passes must write nothing.
func (c *clusterRows) steadyRow(ctx context.Context) error {
	e := c.e
	fds := 1 + len(c.kept)
	interval := max(c.cfg.SteadyWindow/4, 500*time.Millisecond)
	// Everything the running operator still has to write (a node that stopped changes every
	// FilterDeployment's node count) lands before the restart, so it is not counted as resync.
	if err := e.poll(ctx, time.Minute, "FilterDeployment statuses to settle", func() (bool, error) {
		var l wasmev1.FilterDeploymentList
		if err := e.admin.List(ctx, &l); err != nil {
			return false, err
		}
		for _, fd := range l.Items {
			if fd.Status.CacheNodes != int32(len(e.nodes)) || fd.Status.CachedNodes != int32(len(e.nodes)) {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		return err
	}
	time.Sleep(time.Second)
	e.step("row 2: operator restart and %s of passes every %s over %d FilterDeployments", c.cfg.SteadyWindow, interval, fds)
	_ = e.op.Stop()
	e.op = nil
	e.apiCalls.take()
	e.proxy.take()
	before := reconciles()
	if err := e.startOperator(ctx, interval); err != nil {
		return err
	}
	if err := e.poll(ctx, 2*time.Minute, "the restarted operator's first passes", func() (bool, error) {
		return reconciles()-before >= float64(fds), nil
	}); err != nil {
		return err
	}
	time.Sleep(c.cfg.SteadyWindow)
	passes := reconciles() - before
	calls := e.apiCalls.take()
	reqs, bytes := e.proxy.take()
	w, total := writesOnly(calls)
	c.rep.Rows = append(c.rep.Rows, Row{
		Row: 2, Name: "API writes per steady-state resync", Case: fmt.Sprintf("restart + %s, %d FDs, %d workloads", c.cfg.SteadyWindow, fds, c.keptN),
		Wasme:      fmt.Sprintf("%d writes in %.0f passes", total, passes),
		Comparison: "target 0; original: one Event per image per node every 2 s",
		Note: fmt.Sprintf("writes %s; reads %s; registry %s, %s (a restart pulls each digest once, each pass resolves the tag)",
			jsonString(w), jsonString(readsOnly(calls)), jsonString(reqs), kib(float64(bytes))),
		Values: map[string]any{"writes": total, "calls": calls, "passes": passes, "registry_requests": reqs, "registry_bytes": bytes},
	})
	return nil
}

func readsOnly(m map[string]int) map[string]int {
	out := map[string]int{}
	for k, n := range m {
		if !isWrite(k) {
			out[k] = n
		}
	}
	return out
}

// memoryRows runs `wasme operator` as its own process over the applied FilterDeployments and
// reads its peak RSS, before and after adding unrelated Deployments and ConfigMaps.
func (c *clusterRows) memoryRows(ctx context.Context) error {
	e := c.e
	if c.cfg.Wasme == "" {
		return fmt.Errorf("no wasme binary")
	}
	// One operator at a time: the in-process one stops here.
	if e.op != nil {
		_ = e.op.Stop()
		e.op = nil
	}
	kc := filepath.Join(e.dir, "operator.kubeconfig")
	if err := testenv.WriteKubeconfig(e.opCfg, kc, ""); err != nil {
		return err
	}
	fds := 1 + len(c.kept)
	e.step("row 2: operator memory (own process) with %d workloads", c.keptN)
	a, err := operatorMemory(ctx, c.cfg.Wasme, kc, fds, e.dir, c.cfg.MemoryIdle)
	if err != nil {
		return err
	}
	e.step("row 2: adding %d unrelated Deployments and %d ConfigMaps", c.cfg.Unrelated/2, c.cfg.Unrelated-c.cfg.Unrelated/2)
	var objs []client.Object
	for i := 0; i < c.cfg.Unrelated; i++ {
		ns := fmt.Sprintf("unrelated-%d", i%10)
		if i < 10 {
			if err := e.ensureNamespace(ctx, ns); err != nil {
				return err
			}
		}
		name := fmt.Sprintf("obj-%05d", i)
		if i%2 == 0 {
			objs = append(objs, workloadDeployment(ns, name, map[string]string{"app": name}))
		} else {
			objs = append(objs, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
				Data: map[string]string{"config.yaml": strings.Repeat("key: value\n", 40)}})
		}
	}
	t := time.Now()
	if err := e.createParallel(ctx, objs); err != nil {
		return err
	}
	e.step("   created in %s", time.Since(t).Round(time.Millisecond))
	b, err := operatorMemory(ctx, c.cfg.Wasme, kc, fds, e.dir, c.cfg.MemoryIdle)
	if err != nil {
		return err
	}
	perObj := (b.rss - a.rss) / float64(max(c.cfg.Unrelated/2, 1))
	c.rep.Rows = append(c.rep.Rows, Row{
		Row: 2, Name: "operator peak memory", Case: fmt.Sprintf("%d workloads + %d unrelated Deployments/ConfigMaps", c.keptN, c.cfg.Unrelated),
		Wasme:      fmt.Sprintf("peak RSS %s (RSS %s, heap %s when idle)", mib(b.hwm), mib(b.rss), mib(b.heap)),
		Comparison: fmt.Sprintf("without the unrelated objects: peak RSS %s (RSS %s, heap %s)", mib(a.hwm), mib(a.rss), mib(a.heap)),
		Ratio:      fmt.Sprintf("%.2fx", b.hwm/a.hwm),
		Note: fmt.Sprintf("`wasme operator` in its own process, VmHWM from /proc after its first passes over %d FDs; idle RSS %.1f KiB more per unrelated Deployment (ConfigMaps are not watched); the peak includes validating the module in wazero; initial sync %s vs %s",
			fds, perObj/1024, human(b.syncMS), human(a.syncMS)),
		Values: map[string]any{"peak_rss_bytes": b.hwm, "rss_bytes": b.rss, "heap_bytes": b.heap, "baseline_peak_rss_bytes": a.hwm,
			"baseline_rss_bytes": a.rss, "baseline_heap_bytes": a.heap,
			"unrelated": c.cfg.Unrelated, "workloads": c.keptN, "sync_ms": b.syncMS, "baseline_sync_ms": a.syncMS},
	})
	return nil
}

type memory struct{ hwm, rss, heap, syncMS float64 }

// operatorMemory starts `wasme operator`, waits until it has reconciled every FilterDeployment
// and its queue stayed empty for idle, and reads its peak RSS and heap.
func operatorMemory(ctx context.Context, bin, kubeconfig string, fds int, dir string, idle time.Duration) (memory, error) {
	metricsAddr, err := proc.FreeAddr()
	if err != nil {
		return memory{}, err
	}
	start := time.Now()
	p, err := proc.Start("wasme operator", bin, []string{"operator", "--kubeconfig", kubeconfig,
		"--metrics-bind-address", metricsAddr, "--health-probe-bind-address", "0",
		"--module-bind-address", "127.0.0.1:0", "--resolve-interval", "1h", "--log-level", "error",
		"--allowed-registries", "127.0.0.1:*", "--allow-insecure-registries"},
		filepath.Join(dir, "operator-process.log"), proc.Options{})
	if err != nil {
		return memory{}, err
	}
	defer p.Stop()
	exited := p.Exited()
	var m memory
	idleSince := time.Time{}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		select {
		case <-exited:
			return m, fmt.Errorf("wasme operator exited; see operator-process.log")
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return m, fmt.Errorf("wasme operator did not reconcile %d FilterDeployments in 3 minutes", fds)
		}
		vals, err := scrape("http://" + metricsAddr + "/metrics")
		if err != nil {
			continue
		}
		done := vals[`controller_runtime_reconcile_total{controller="filterdeployment"}`] >= float64(fds) &&
			vals[`workqueue_depth{controller="filterdeployment"}`] == 0
		switch {
		case !done:
			idleSince = time.Time{}
		case idleSince.IsZero():
			idleSince = time.Now()
			m.syncMS = ms(time.Since(start))
		case time.Since(idleSince) >= idle:
			m.heap = vals["go_memstats_heap_inuse_bytes"]
			if m.rss, err = procStatusBytes(p.Pid(), "VmRSS"); err != nil {
				return m, err
			}
			m.hwm, err = procStatusBytes(p.Pid(), "VmHWM")
			return m, err
		}
	}
}

// scrape reads a Prometheus text endpoint into name{selected labels} -> summed value; only the
// labels "controller" are kept, so counters with a "result" label are summed.
func scrape(url string) (map[string]float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			continue
		}
		name, labels, _ := strings.Cut(line[:sp], "{")
		key := name
		for _, l := range strings.Split(strings.TrimSuffix(labels, "}"), ",") {
			if strings.HasPrefix(l, "controller=") {
				key = name + "{" + l + "}"
			}
		}
		out[key] += v
	}
	return out, sc.Err()
}

// procStatusBytes reads a "kB" field of /proc/<pid>/status.
func procStatusBytes(pid int, field string) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(v)
			n, err := strconv.ParseFloat(f[0], 64)
			return n * 1024, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// faster relates a duration to the article's 30 s.
func faster(ratio float64) string {
	if ratio >= 10 {
		return fmt.Sprintf("%.0fx faster than the article", ratio)
	}
	return fmt.Sprintf("%.1fx faster than the article", ratio)
}
