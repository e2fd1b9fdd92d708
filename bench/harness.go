// Package bench measures how fast and how cheaply wasme puts a filter on every workload, on
// real parts: a real kube-apiserver and etcd (envtest), the CNCF distribution registry (a pinned build), wasme's
// operator and node cache daemons, the oras CLI and nginx. Run measures every row of the
// table; `make bench` runs it at full size through cmd/wasme-bench, and bench_test.go runs
// every row at a tiny size in `make test` so the benchmarks cannot rot.
package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	appsv1 "k8s.io/api/apps/v1"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/cacheprotocol"
	"wasme.io/wasme/internal/nodecache"
	"wasme.io/wasme/internal/operator"
	"wasme.io/wasme/internal/testing/components"
	"wasme.io/wasme/internal/testing/registry"
	"wasme.io/wasme/internal/testing/testenv"
	"wasme.io/wasme/internal/testing/tools"
	"wasme.io/wasme/internal/testing/wasmbuild"
	"wasme.io/wasme/pkg/wasmimage"
)

// env is one benchmark run's world: the API server, the registry behind a counting proxy, the
// operator (in this process, its API traffic counted) and the node cache daemons.
type env struct {
	dir      string
	kube     *testenv.Env
	admin    client.WithWatch
	registry *registry.Registry
	proxy    *countingProxy
	module   []byte // custom-header, built from examples/filters
	progress io.Writer

	op         *components.Operator
	apiCalls   *apiCounter
	nodes      []*components.NodeCache
	nodeBytes  atomic.Int64 // module bytes the node caches read from the operator
	opCfg      *rest.Config // the operator's ServiceAccount, unwrapped
	cacheCfg   *rest.Config
	cacheToken string
	istioVer   string
	moduleAddr string
}

func (e *env) step(format string, args ...any) {
	fmt.Fprintf(e.progress, "==> "+format+"\n", args...)
}

// startEnv starts the API server, the registry and its proxy, applies deploy/wasme.yaml
// (namespace, ServiceAccounts, RBAC) and an istiod Deployment for the version detection, and
// takes the custom-header filter's bytes.
func startEnv(ctx context.Context, dir string, module []byte, progress io.Writer) (_ *env, err error) {
	e := &env{dir: dir, module: module, progress: progress, apiCalls: newAPICounter()}
	defer func() {
		if err != nil {
			e.stop()
		}
	}()
	e.step("starting etcd and kube-apiserver (envtest), installing the CRDs")
	if e.kube, err = testenv.Start(); err != nil {
		return e, err
	}
	if e.admin, err = client.NewWithWatch(e.kube.Config, client.Options{Scheme: e.kube.Scheme}); err != nil {
		return e, err
	}
	if err := e.kube.ApplyFile(ctx, filepath.Join(tools.RepoRoot(), "deploy", "wasme.yaml")); err != nil {
		return e, err
	}
	if e.istioVer, err = tools.IstioVersion(); err != nil {
		return e, err
	}
	if err := e.ensureNamespace(ctx, "istio-system"); err != nil {
		return e, err
	}
	// The operator reads the Istio version from istiod's image tag, as in a cluster.
	istiod := workloadDeployment("istio-system", "istiod", map[string]string{"app": "istiod"})
	istiod.Spec.Template.Spec.Containers[0].Name = "discovery"
	istiod.Spec.Template.Spec.Containers[0].Image = "istio/pilot:" + e.istioVer
	if err := e.admin.Create(ctx, istiod); err != nil && !apierrors.IsAlreadyExists(err) {
		return e, err
	}
	if e.opCfg, _, err = e.serviceAccount(ctx, "wasme", "wasme-operator"); err != nil {
		return e, err
	}
	if e.cacheCfg, e.cacheToken, err = e.serviceAccount(ctx, "wasme", "wasme-cache"); err != nil {
		return e, err
	}
	if err := os.WriteFile(filepath.Join(dir, "cache.token"), []byte(e.cacheToken), 0o600); err != nil {
		return e, err
	}

	e.step("starting the distribution registry (plain HTTP on loopback) behind a counting proxy")
	if e.registry, err = registry.Start(ctx, registry.Options{Dir: filepath.Join(dir, "registry"), Progress: progress}); err != nil {
		return e, err
	}
	if e.proxy, err = newCountingProxy(e.registry.Host); err != nil {
		return e, err
	}
	return e, nil
}

func (e *env) stop() {
	e.stopNodes(0)
	if e.op != nil {
		_ = e.op.Stop()
	}
	if e.proxy != nil {
		e.proxy.close()
	}
	if e.registry != nil {
		e.registry.Stop()
	}
	if e.kube != nil {
		_ = e.kube.Stop()
	}
}

// serviceAccount returns a config and token of a shipped ServiceAccount, so the operator and
// the daemons run with deploy/wasme.yaml's RBAC, as in a cluster.
func (e *env) serviceAccount(ctx context.Context, ns, name string) (*rest.Config, string, error) {
	cfg, token, err := e.kube.ServiceAccountConfig(ctx, ns, name)
	if err != nil {
		return nil, "", err
	}
	// As in the cluster: controller-runtime's GetConfig turns client-side throttling off (QPS
	// -1) and relies on the API server's priority and fairness; client-go's default of 5 QPS
	// would make the throttle the figure measured.
	cfg.QPS = -1
	return cfg, token, nil
}

// nodeCacheConfig is the config of the node cache on node: a token bound to a pod there, as
// the kubelet mounts it (the NodeCache admission policy requires it), unthrottled as in the
// cluster.
func (e *env) nodeCacheConfig(ctx context.Context, node string) (*rest.Config, error) {
	cfg, err := e.kube.NodeCacheConfig(ctx, "wasme", node)
	if err != nil {
		return nil, err
	}
	cfg.QPS = -1
	return cfg, nil
}

func (e *env) ensureNamespace(ctx context.Context, name string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := e.admin.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// startOperator runs the operator with its ServiceAccount's config, every API request counted.
func (e *env) startOperator(ctx context.Context, resolveInterval time.Duration) error {
	return e.startOperatorWith(ctx, resolveInterval, 0)
}

// startOperatorWith is startOperator with the operator's --cache-report-delay.
func (e *env) startOperatorWith(ctx context.Context, resolveInterval, cacheReportDelay time.Duration) error {
	if e.op != nil {
		_ = e.op.Stop()
		e.op = nil
	}
	cfg := rest.CopyConfig(e.opCfg)
	cfg.Wrap(e.apiCalls.wrap)
	op, err := components.StartOperator(ctx, components.OperatorOptions{
		Config: cfg, Scheme: e.kube.Scheme,
		// The same module address across restarts: the node caches keep their source URL.
		ModuleAddr:       e.moduleAddr,
		ResolveInterval:  resolveInterval,
		CacheReportDelay: cacheReportDelay,
		// The bench registry is on loopback over plain HTTP, which the defaults refuse.
		Images:                  operator.RegistryImages{Egress: loopbackEgress},
		AllowInsecureRegistries: true,
		SkipNameValidation:      true,
		LogPath:                 filepath.Join(e.dir, "operator.log"),
	})
	if err != nil {
		return err
	}
	e.op, e.moduleAddr = op, op.ModuleAddr
	return nil
}

// countingSource counts the module bytes a daemon reads from the operator.
type countingSource struct {
	nodecache.Source
	n *atomic.Int64
}

func (s countingSource) Fetch(ctx context.Context, hexDigest string) (io.ReadCloser, error) {
	rc, err := s.Source.Fetch(ctx, hexDigest)
	if err != nil {
		return nil, err
	}
	return countingReadCloser{rc, s.n}, nil
}

type countingReadCloser struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c countingReadCloser) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// startNodes brings the number of running node caches up to n (node-1 ... node-n), each with
// an empty directory (a cold cache), and waits until each reports Ready.
func (e *env) startNodes(ctx context.Context, n int) error {
	if e.op == nil {
		return errors.New("start the operator first: the daemons fetch from its module server")
	}
	for i := len(e.nodes) + 1; i <= n; i++ {
		name := fmt.Sprintf("node-%d", i)
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}}}
		if err := e.admin.Create(ctx, node); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
		dir, err := os.MkdirTemp(e.dir, name+"-")
		if err != nil {
			return err
		}
		// As the DaemonSet's projected volume holds it: a token of the module server's audience.
		token, err := e.kube.CacheToken(ctx, "wasme", name)
		if err != nil {
			return err
		}
		tokenFile := filepath.Join(dir, "..", name+".module-token")
		if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
			return err
		}
		clientOpts, err := e.op.ClientOptions(filepath.Dir(tokenFile), tokenFile, name)
		if err != nil {
			return err
		}
		src, err := cacheprotocol.NewClient(clientOpts)
		if err != nil {
			return err
		}
		cacheCfg, err := e.nodeCacheConfig(ctx, name)
		if err != nil {
			return err
		}
		nc, err := components.StartNodeCache(ctx, components.NodeCacheOptions{
			NodeName: name, Dir: dir, Config: cacheCfg, Source: countingSource{src, &e.nodeBytes},
		})
		if err != nil {
			return err
		}
		e.nodes = append(e.nodes, nc)
	}
	// Ready: the NodeCache says so, which is what the operator counts.
	return e.poll(ctx, time.Minute, "node caches ready", func() (bool, error) {
		for _, rn := range e.nodes {
			nc := &wasmev1.NodeCache{}
			if err := e.admin.Get(ctx, client.ObjectKey{Name: rn.NodeName}, nc); err != nil {
				if apierrors.IsNotFound(err) {
					return false, nil
				}
				return false, err
			}
			if !apimeta.IsStatusConditionTrue(nc.Status.Conditions, wasmev1.ReadyCondition) {
				return false, nil
			}
		}
		return true, nil
	})
}

// stopNodes stops the daemons beyond the first n; each reports Ready=False on the way out, so
// the operator stops counting it.
func (e *env) stopNodes(n int) {
	for len(e.nodes) > n {
		_ = e.nodes[len(e.nodes)-1].Stop()
		e.nodes = e.nodes[:len(e.nodes)-1]
	}
}

// poll calls cond every 50 ms until it holds.
func (e *env) poll(ctx context.Context, timeout time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// pushModule pushes module straight to the registry (not through the counting proxy) and
// returns its reference as seen through the proxy, which is what FilterDeployments name.
func (e *env) pushModule(ctx context.Context, repoTag string, module []byte) (string, error) {
	if _, err := wasmimage.Push(ctx, e.registry.Host+"/"+repoTag, module,
		wasmimage.RuntimeConfig{RootIDs: []string{"add_header"}}, wasmimage.WithPlainHTTP(true)); err != nil {
		return "", err
	}
	return e.proxy.host + "/" + repoTag, nil
}

// uniqueModule is custom-header with a custom section holding a fresh nonce: a new digest
// that behaves exactly like the original (engines ignore custom sections).
func uniqueModule(base []byte) []byte {
	nonce := make([]byte, 16)
	_, _ = rand.Read(nonce)
	return wasmbuild.WithCustomSection(base, "wasme-bench", nonce)
}

// workloadDeployment is a minimal Deployment; no kubelet runs, so it never gets pods, which
// the operator does not need.
func workloadDeployment(ns, name string, labels map[string]string) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
			},
		},
	}
}

// createParallel creates objects with a few workers; the API server, not the client, should be
// what limits the rate.
func (e *env) createParallel(ctx context.Context, objs []client.Object) error {
	var (
		wg    sync.WaitGroup
		next  atomic.Int64
		first error
		mu    sync.Mutex
	)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(objs) {
					return
				}
				if err := e.admin.Create(ctx, objs[i]); err != nil && !apierrors.IsAlreadyExists(err) {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// loopbackEgress lets the operator reach the bench registry and its proxy on loopback.
var loopbackEgress = func() *wasmimage.EgressPolicy {
	p, err := wasmimage.NewEgressPolicy([]string{"127.0.0.1:*"}, nil)
	if err != nil {
		panic(err)
	}
	return p
}()

// filterDeployment is the seed's FilterDeployment shape: every Deployment of the namespace,
// custom-header with its default header (hello: world!), pulled over plain HTTP from the bench registry.
func filterDeployment(ns, name, image, run string) *wasmev1.FilterDeployment {
	return &wasmev1.FilterDeployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{runLabel: run}},
		Spec: wasmev1.FilterDeploymentSpec{
			Filter: wasmev1.FilterSpec{
				Image:            image,
				ImagePullOptions: &wasmev1.ImagePullOptions{PlainHTTP: true},
			},
			Deployment: wasmev1.DeploymentSpec{Istio: wasmev1.IstioDeploymentSpec{Kind: "Deployment"}},
		},
	}
}

const runLabel = "bench.wasme.io/run"

// applyAndWait creates the FilterDeployments and returns how long it took until every one
// is Ready for its current generation with all its workloads Succeeded (want[i] of them). It
// watches rather than polls, so the figure is not quantized by a poll interval.
func (e *env) applyAndWait(ctx context.Context, fds []*wasmev1.FilterDeployment, want []int, timeout time.Duration) (time.Duration, error) {
	run := fds[0].Labels[runLabel]
	w, err := e.admin.Watch(ctx, &wasmev1.FilterDeploymentList{}, client.MatchingLabels{runLabel: run})
	if err != nil {
		return 0, err
	}
	defer w.Stop()
	start := time.Now()
	for _, fd := range fds {
		if err := e.admin.Create(ctx, fd); err != nil {
			return 0, err
		}
	}
	wantOf := map[string]int{}
	for i, fd := range fds {
		wantOf[fd.Namespace+"/"+fd.Name] = want[i]
	}
	ready := map[string]bool{}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	last := map[string]string{}
	for len(ready) < len(fds) {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				return 0, errors.New("the FilterDeployment watch closed")
			}
			if ev.Type != watch.Added && ev.Type != watch.Modified {
				continue
			}
			fd, ok := ev.Object.(*wasmev1.FilterDeployment)
			if !ok {
				continue
			}
			key := fd.Namespace + "/" + fd.Name
			n := wantOf[key]
			cond := apimeta.FindStatusCondition(fd.Status.Conditions, wasmev1.ReadyCondition)
			if cond != nil {
				last[key] = cond.Reason + ": " + cond.Message
			}
			if cond != nil && cond.Status == metav1.ConditionTrue && fd.Status.ObservedGeneration == fd.Generation &&
				fd.Status.WorkloadsReady == fmt.Sprintf("%d/%d", n, n) {
				ready[key] = true
			}
		case <-timer.C:
			return 0, fmt.Errorf("%d/%d FilterDeployments Ready after %s; last status: %v", len(ready), len(fds), timeout, last)
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return time.Since(start), nil
}

// deleteAndWait deletes the FilterDeployments and waits until the operator has finalized them
// (EnvoyFilters gone, workloads restored), so the next run starts from the same state.
func (e *env) deleteAndWait(ctx context.Context, fds []*wasmev1.FilterDeployment, timeout time.Duration) error {
	for _, fd := range fds {
		if err := e.admin.Delete(ctx, fd); client.IgnoreNotFound(err) != nil {
			return err
		}
	}
	return e.poll(ctx, timeout, "FilterDeployments finalized", func() (bool, error) {
		for _, fd := range fds {
			err := e.admin.Get(ctx, client.ObjectKeyFromObject(fd), &wasmev1.FilterDeployment{})
			if err == nil {
				return false, nil
			}
			if !apierrors.IsNotFound(err) {
				return false, err
			}
		}
		return true, nil
	})
}

// countingProxy is a reverse proxy in front of the registry that counts requests and response
// bytes: the registry egress a rollout costs.
type countingProxy struct {
	host string
	srv  *http.Server
	mu   sync.Mutex
	reqs map[string]int // "GET manifests", "HEAD manifests", "GET blobs", ...
	body int64
}

func newCountingProxy(target string) (*countingProxy, error) {
	u, _ := url.Parse("http://" + target)
	rp := httputil.NewSingleHostReverseProxy(u)
	p := &countingProxy{reqs: map[string]int{}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p.host = l.Addr().String()
	p.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind := "other"
		switch {
		case strings.Contains(r.URL.Path, "/manifests/"):
			kind = "manifests"
		case strings.Contains(r.URL.Path, "/blobs/"):
			kind = "blobs"
		}
		cw := &countingWriter{ResponseWriter: w}
		rp.ServeHTTP(cw, r)
		p.mu.Lock()
		p.reqs[r.Method+" "+kind]++
		p.body += cw.n
		p.mu.Unlock()
	})}
	go func() { _ = p.srv.Serve(l) }()
	return p, nil
}

type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}

// take returns the counts since the last take and resets them.
func (p *countingProxy) take() (map[string]int, int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, b := p.reqs, p.body
	p.reqs, p.body = map[string]int{}, 0
	return r, b
}

func (p *countingProxy) close() { _ = p.srv.Close() }

// apiCounter counts API requests by verb and resource, from the client side of one rest.Config.
type apiCounter struct {
	mu     sync.Mutex
	counts map[string]int
}

func newAPICounter() *apiCounter { return &apiCounter{counts: map[string]int{}} }

func (c *apiCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripperFunc(func(r *http.Request) (*http.Response, error) {
		c.mu.Lock()
		c.counts[requestKey(r)]++
		c.mu.Unlock()
		return rt.RoundTrip(r)
	})
}

// take returns the counts since the last take and resets them.
func (c *apiCounter) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.counts
	c.counts = map[string]int{}
	return out
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// requestKey is "<verb> <resource>[/<subresource>]" in kubectl's words (get, list, watch,
// create, update, patch, apply, delete).
func requestKey(r *http.Request) string {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	switch {
	case len(parts) >= 2 && parts[0] == "api":
		parts = parts[2:]
	case len(parts) >= 3 && parts[0] == "apis":
		parts = parts[3:]
	default:
		// Discovery (/api, /apis, /version): reads.
		return strings.ToLower(r.Method) + " " + r.URL.Path
	}
	if len(parts) >= 3 && parts[0] == "namespaces" {
		parts = parts[2:]
	}
	resource, named := "", false
	if len(parts) > 0 {
		resource = parts[0]
	}
	if len(parts) > 1 {
		named = true
	}
	if len(parts) > 2 {
		resource += "/" + parts[2]
	}
	verb := strings.ToLower(r.Method)
	switch r.Method {
	case http.MethodGet:
		switch {
		case r.URL.Query().Get("watch") == "true" || r.URL.Query().Get("watch") == "1":
			verb = "watch"
		case named:
			verb = "get"
		default:
			verb = "list"
		}
	case http.MethodPost:
		verb = "create"
	case http.MethodPut:
		verb = "update"
	case http.MethodPatch:
		verb = "patch"
		if strings.HasPrefix(r.Header.Get("Content-Type"), "application/apply-patch") {
			verb = "apply"
		}
	}
	return verb + " " + resource
}

// isWrite tells whether a counted verb changes the API server's state.
func isWrite(key string) bool {
	verb, _, _ := strings.Cut(key, " ")
	switch verb {
	case "get", "list", "watch":
		return false
	}
	return true
}

// jsonString renders v compactly for the table's notes.
func jsonString(v any) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
	return strings.TrimSpace(b.String())
}
