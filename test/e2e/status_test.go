package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"k8s.io/apimachinery/pkg/api/equality"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	kstatus "sigs.k8s.io/cli-utils/pkg/kstatus/status"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/config/samples"
	"wasme.io/wasme/internal/cli"
	"wasme.io/wasme/internal/proxystatus"
	"wasme.io/wasme/internal/testing/localcluster"
	"wasme.io/wasme/internal/testing/xdsproxy"
)

// startSidecar starts the test proxy of a Deployment's pod; cacheDir, when set, is the
// module directory it reads instead of its node's.
func startSidecar(t *testing.T, deployment, cacheDir string) *xdsproxy.Proxy {
	t.Helper()
	p, err := cluster.StartSidecar(context.Background(), localcluster.BookinfoNamespace, deployment, localcluster.SidecarOptions{
		Upstream: upstream, CacheDir: cacheDir,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// histogramCount is how many observations a histogram of the operator's (in this process) has.
func histogramCount(t *testing.T, name string) uint64 {
	t.Helper()
	mfs, err := ctrlmetrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, mf := range mfs {
		if mf.GetName() != name || mf.GetType() != dto.MetricType_HISTOGRAM {
			continue
		}
		for _, m := range mf.GetMetric() {
			n += m.GetHistogram().GetSampleCount()
		}
	}
	return n
}

// podStates is "pod=state" for the workload's pods that are not programmed.
func podStates(ws wasmev1.WorkloadStatus) string {
	var out []string
	for _, p := range ws.NotProgrammed {
		out = append(out, p.Pod+"="+string(p.State))
	}
	return strings.Join(out, ",")
}

// TestProgrammed: Programmed and the per-workload proxies come from the real istiod's own
// per-proxy state (its /debug/syncz, read by the operator with its ServiceAccount's token,
// which istiod does not check for loopback callers such as this test's). A proxy whose node lacks the module NACKs, and status names its pod
// with its NACK message and Programmed=False while Ready stays True (kstatus Current); a pod
// whose proxy never connected shows as not connected; once both proxies ACK, Programmed=True
// and the rollout histogram has one more observation; a proxy that disconnects drops out.
func TestProgrammed(t *testing.T) {
	ctx := context.Background()
	ref := push(t, "filters/custom-header:programmed")
	details, err := cluster.WaitPod(ctx, localcluster.BookinfoNamespace, "details-v1")
	if err != nil {
		t.Fatal(err)
	}
	productpage, err := cluster.WaitPod(ctx, localcluster.BookinfoNamespace, "productpage-v1")
	if err != nil {
		t.Fatal(err)
	}
	// details-v1's proxy reads an empty directory: its node "lacks" the module, so it refuses
	// every listener update that carries the filter, as Envoy does.
	nacking := startSidecar(t, "details-v1", t.TempDir())
	waitChain(t, nacking, "the first listener push", func(*xdsproxy.Chain) bool { return true })
	before := histogramCount(t, "wasme_filterdeployment_apply_to_programmed_seconds")

	applyFD(t, fmt.Sprintf(`apiVersion: wasme.io/v1
kind: FilterDeployment
metadata:
  name: programmed
  namespace: bookinfo
spec:
  deployment:
    istio:
      kind: Deployment
  filter:
    image: %s
    config: '{"name":"x-programmed","value":"yes"}'
`, ref))
	eventually(t, "Ready", func() (bool, string) { return readyFD(t, "programmed") })

	var fd *wasmev1.FilterDeployment
	eventually(t, "details-v1 rejected and productpage-v1 not connected", func() (bool, string) {
		fd = getFD(t, "programmed")
		d, pp := fd.Status.Workloads["details-v1"], fd.Status.Workloads["productpage-v1"]
		c := apimeta.FindStatusCondition(fd.Status.Conditions, wasmev1.ProgrammedCondition)
		ok := c != nil && c.Status == metav1.ConditionFalse && c.Reason == wasmev1.ProxyRejectedReason &&
			d.Proxies == "0/1" && len(d.NotProgrammed) == 1 && d.NotProgrammed[0].State == wasmev1.ProxyRejected &&
			pp.Proxies == "0/1" && len(pp.NotProgrammed) == 1 && pp.NotProgrammed[0].State == wasmev1.ProxyNotConnected
		return ok, fmt.Sprintf("Programmed %+v; details-v1 %s [%s]; productpage-v1 %s [%s]", c, d.Proxies, podStates(d), pp.Proxies, podStates(pp))
	})
	rej := fd.Status.Workloads["details-v1"].NotProgrammed[0]
	if rej.Pod != details.Name || !strings.Contains(rej.Message, "reading the module") || !strings.Contains(rej.Message, "programmed.bookinfo") {
		t.Errorf("details-v1's rejection names pod %q with %q; want pod %s and the proxy's NACK (reading the module of programmed.bookinfo)",
			rej.Pod, rej.Message, details.Name)
	}
	// The proxy's own error, as istiod recorded it from the NACK.
	var nack error
	for _, u := range nacking.Updates() {
		if u.Err != nil {
			nack = u.Err
		}
	}
	if nack == nil || !strings.Contains(rej.Message, nack.Error()) {
		t.Errorf("status message %q does not carry the proxy's NACK %v", rej.Message, nack)
	}
	if nc := fd.Status.Workloads["productpage-v1"].NotProgrammed[0]; nc.Pod != productpage.Name {
		t.Errorf("productpage-v1's not-connected pod is %q, want %s", nc.Pod, productpage.Name)
	}
	// Ready is what the operator wrote, and kstatus reads the object as Current all along.
	if !apimeta.IsStatusConditionTrue(fd.Status.Conditions, wasmev1.ReadyCondition) {
		t.Errorf("Ready is not True while a proxy NACKs: %+v", fd.Status.Conditions)
	}
	if res := kstatusOf(t, fd); res.Status != kstatus.CurrentStatus {
		t.Errorf("kstatus %s (%s) with Programmed=False", res.Status, res.Message)
	}
	if fd.Status.ProxiesProgrammed != "0/2" {
		t.Errorf("proxiesProgrammed %q, want 0/2", fd.Status.ProxiesProgrammed)
	}

	checkWasmeStatus(t, fd)

	// The node gets its module: a proxy reading the node's cache ACKs.
	if err := nacking.Close(); err != nil {
		t.Fatal(err)
	}
	acking := startSidecar(t, "details-v1", "")
	waitChain(t, acking, "the filter in details-v1", func(c *xdsproxy.Chain) bool { return len(c.Wasm) == 1 })
	eventually(t, "details-v1 programmed", func() (bool, string) {
		fd = getFD(t, "programmed")
		d := fd.Status.Workloads["details-v1"]
		c := apimeta.FindStatusCondition(fd.Status.Conditions, wasmev1.ProgrammedCondition)
		return d.Proxies == "1/1" && len(d.NotProgrammed) == 0 && c != nil && c.Status == metav1.ConditionFalse && c.Reason == wasmev1.ProxiesPendingReason,
			fmt.Sprintf("details-v1 %s [%s]; Programmed %+v", d.Proxies, podStates(d), c)
	})
	if got := histogramCount(t, "wasme_filterdeployment_apply_to_programmed_seconds"); got != before {
		t.Errorf("the rollout histogram has %d observations before every proxy ran the filter, had %d", got, before)
	}

	// productpage-v1's proxy connects: every proxy runs the filter.
	pp := startSidecar(t, "productpage-v1", "")
	waitChain(t, pp, "the filter in productpage-v1", func(c *xdsproxy.Chain) bool { return len(c.Wasm) == 1 })
	eventually(t, "Programmed", func() (bool, string) {
		fd = getFD(t, "programmed")
		c := apimeta.FindStatusCondition(fd.Status.Conditions, wasmev1.ProgrammedCondition)
		return c != nil && c.Status == metav1.ConditionTrue && c.ObservedGeneration == fd.Generation && fd.Status.ProxiesProgrammed == "2/2",
			fmt.Sprintf("Programmed %+v, proxies %s", c, fd.Status.ProxiesProgrammed)
	})
	if got := histogramCount(t, "wasme_filterdeployment_apply_to_programmed_seconds"); got != before+1 {
		t.Errorf("the rollout histogram has %d observations, want %d (one for this rollout)", got, before+1)
	}

	// productpage-v1's proxy goes away: it drops out within the operator's poll interval
	// (docs/status.md); the wait here is the harness's generous bound, not that figure.
	if err := pp.Close(); err != nil {
		t.Fatal(err)
	}
	gone := time.Now()
	eventually(t, "productpage-v1 not connected again", func() (bool, string) {
		fd = getFD(t, "programmed")
		ws := fd.Status.Workloads["productpage-v1"]
		c := apimeta.FindStatusCondition(fd.Status.Conditions, wasmev1.ProgrammedCondition)
		return ws.Proxies == "0/1" && len(ws.NotProgrammed) == 1 && ws.NotProgrammed[0].State == wasmev1.ProxyNotConnected &&
				c != nil && c.Status == metav1.ConditionFalse,
			fmt.Sprintf("productpage-v1 %s [%s]; Programmed %+v", ws.Proxies, podStates(ws), c)
	})
	t.Logf("a disconnected proxy dropped out of status after %s", time.Since(gone).Round(10*time.Millisecond))
	if got := histogramCount(t, "wasme_filterdeployment_apply_to_programmed_seconds"); got != before+1 {
		t.Errorf("the rollout histogram has %d observations after a proxy left, want still %d", got, before+1)
	}
}

func kstatusOf(t *testing.T, fd *wasmev1.FilterDeployment) *kstatus.Result {
	t.Helper()
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(fd)
	if err != nil {
		t.Fatal(err)
	}
	res, err := kstatus.Compute(&unstructured.Unstructured{Object: obj})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// checkWasmeStatus: `wasme status` shows what the status says, in JSON and in its table.
func checkWasmeStatus(t *testing.T, fd *wasmev1.FilterDeployment) {
	t.Helper()
	run := func(args ...string) string {
		var out, errOut strings.Builder
		args = append([]string{"status", "--kubeconfig", cluster.Kubeconfig, "-n", fd.Namespace}, args...)
		if err := cli.Run(context.Background(), args, &out, &errOut); err != nil {
			t.Fatalf("wasme %v: %v (%s)", args, err, errOut.String())
		}
		return out.String()
	}
	// Read again: the status may have moved since fd was read (a pass per poll), and the
	// command must match the object it reads.
	var views []cli.FilterStatus
	if err := json.Unmarshal([]byte(run(fd.Name, "-o", "json")), &views); err != nil {
		t.Fatal(err)
	}
	cur := getFD(t, fd.Name)
	if len(views) != 1 {
		t.Fatalf("wasme status %s -o json printed %d FilterDeployments", fd.Name, len(views))
	}
	v := views[0]
	prog := apimeta.FindStatusCondition(cur.Status.Conditions, wasmev1.ProgrammedCondition)
	if v.Name != fd.Name || v.ModuleDigest != cur.Status.ModuleDigest || v.Proxies != cur.Status.ProxiesProgrammed ||
		prog == nil || v.Programmed.Status != string(prog.Status) || v.Programmed.Reason != prog.Reason || v.Ready.Status != "True" {
		t.Errorf("wasme status: %+v; status: %+v", v, cur.Status)
	}
	if len(v.Workloads) != len(cur.Status.Workloads) {
		t.Fatalf("wasme status shows %d workloads, status has %d", len(v.Workloads), len(cur.Status.Workloads))
	}
	for _, w := range v.Workloads {
		ws := cur.Status.Workloads[w.Name]
		if w.Proxies != ws.Proxies || !equality.Semantic.DeepEqual(w.Pods, ws.NotProgrammed) || w.State != string(ws.State) {
			t.Errorf("wasme status %s: %+v; status %+v", w.Name, w, ws)
		}
	}
	table := run(fd.Name)
	for _, ws := range cur.Status.Workloads {
		for _, p := range ws.NotProgrammed {
			if !strings.Contains(table, p.Pod) || !strings.Contains(table, string(p.State)) {
				t.Errorf("the table lacks pod %s (%s):\n%s", p.Pod, p.State, table)
			}
		}
	}
	if !strings.Contains(strings.Join(strings.Fields(table), " "), "programmed: "+string(prog.Status)+" ("+prog.Reason+")") {
		t.Errorf("the table does not show Programmed %s (%s):\n%s", prog.Status, prog.Reason, table)
	}
	t.Logf("wasme status %s:\n%s", fd.Name, table)
}

// TestSeedProgrammed times the seed's FilterDeployment from apply to Programmed=True with both
// Bookinfo sidecars connected (the figure docs/status.md quotes), and checks the rollout
// histogram took exactly that one rollout.
func TestSeedProgrammed(t *testing.T) {
	push(t, "ryysud/custom-header:v0.1")
	for _, d := range []string{"details-v1", "productpage-v1"} {
		p := startSidecar(t, d, "")
		waitChain(t, p, "the first listener push of "+d, func(*xdsproxy.Chain) bool { return true })
	}
	before := histogramCount(t, "wasme_filterdeployment_apply_to_programmed_seconds")
	start := time.Now()
	applyFD(t, samples.BookinfoCustomFilter(cluster.Registry.Host))
	eventually(t, "Ready", func() (bool, string) { return readyFD(t, seedName) })
	ready := time.Since(start)
	eventually(t, "Programmed", func() (bool, string) {
		fd := getFD(t, seedName)
		c := apimeta.FindStatusCondition(fd.Status.Conditions, wasmev1.ProgrammedCondition)
		return c != nil && c.Status == metav1.ConditionTrue && fd.Status.ProxiesProgrammed == "2/2", fmt.Sprintf("%+v %s", c, fd.Status.ProxiesProgrammed)
	})
	t.Logf("seed FilterDeployment: apply -> Ready in %s, -> Programmed=True (2/2 proxies ACKed) in %s (poll interval 1 s)",
		ready.Round(10*time.Millisecond), time.Since(start).Round(10*time.Millisecond))
	if got := histogramCount(t, "wasme_filterdeployment_apply_to_programmed_seconds"); got != before+1 {
		t.Errorf("the rollout histogram has %d observations, want %d", got, before+1)
	}
	if err := cluster.Client.Delete(context.Background(), getFD(t, seedName)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the seed's EnvoyFilters to go", func() (bool, string) { return len(envoyFilters(t)) == 0, fmt.Sprint(envoyFilters(t)) })
}

// TestProxyStatusCost measures what tracking costs istiod with 50 connected proxies: the syncz
// answer's size and the time istiod takes to answer, as the operator asks (/debug/syncz). It
// asserts only that istiod lists all 50; the figures are logged for docs/status.md.
func TestProxyStatusCost(t *testing.T) {
	ctx := context.Background()
	const n = 50
	for i := range n {
		p, err := xdsproxy.Start(ctx, xdsproxy.Options{
			XDSAddr: cluster.Istiod.XDSAddr,
			Identity: xdsproxy.Identity{PodName: fmt.Sprintf("load-%02d", i), Namespace: "load", PodIP: fmt.Sprintf("127.0.10.%d", i+1),
				WorkloadName: "load", ServiceAccount: "default", IstioVersion: cluster.Istiod.Version + ".0"},
			Port: localcluster.BookinfoPort, Resolve: xdsproxy.PrefixResolver(wasmev1.CacheDir, t.TempDir()), Upstream: upstream,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = p.Close() })
	}
	tr, err := proxystatus.NewTracker(proxystatus.Options{
		SynczURL: "http://" + cluster.Istiod.MonitoringAddr + "/debug/syncz", Interval: time.Second,
		Token: func(ctx context.Context) (string, error) {
			return cluster.Env.AudienceToken(ctx, "wasme", "wasme-operator", proxystatus.Audience)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = tr.Start(runCtx) }()
	defer func() { cancel(); <-done }()
	eventually(t, "istiod to list the 50 proxies", func() (bool, string) {
		snap := tr.Snapshot()
		got := 0
		for _, p := range snap.Proxies {
			if p.Namespace == "load" {
				got++
			}
		}
		return got == n, fmt.Sprintf("%d of %d listed (err %v)", got, n, snap.Err)
	})
	// The polls on the tracker's stream, as the operator's: one request and answer each.
	var stats []proxystatus.QueryStats
	for len(stats) < 10 {
		q := tr.LastQuery()
		if len(stats) == 0 || q != stats[len(stats)-1] {
			stats = append(stats, q)
		}
		time.Sleep(200 * time.Millisecond)
	}
	durs := make([]time.Duration, 0, len(stats))
	for _, q := range stats {
		durs = append(durs, q.Duration)
	}
	slices.Sort(durs)
	last := stats[len(stats)-1]
	t.Logf("syncz with %d connected proxies (%d of them the 50 here): answer %d bytes (%.0f per proxy), query median %s, max %s over %d polls; the operator sends 60/interval queries a minute (6 at the default 10 s)",
		last.Proxies, n, last.Bytes, float64(last.Bytes)/float64(max(last.Proxies, 1)), durs[len(durs)/2].Round(100*time.Microsecond), durs[len(durs)-1].Round(100*time.Microsecond), len(durs))
}
