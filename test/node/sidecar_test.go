package node_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/istio"
	"wasme.io/wasme/internal/testing/node"
)

// TestInjectedSidecar runs meshed pods on the node with the proxyv2 image (node.PushProxyV2:
// the real pilot-agent, wasme's test proxy as its envoy): Istio's injector adds istio-init and
// istio-proxy, istio-init's pilot-agent istio-iptables sets the pod's redirection, and the pods
// become Ready through kubelet's probe of 15021, which the test proxy routes to pilot-agent's
// readiness check (configuration from istiod applied). Then the seed's
// `kubectl exec deploy/productpage-v1 -c istio-proxy -- curl -I http://details.<ns>:9080/details/123`
// answers 200, and details' test proxy counted that request on its inbound listener: it was
// redirected to 15006 and forwarded to the application. Through ECDS (pilot-agent fetching
// the module from a remote http_uri), the filter acts without a pod restart, and a module
// pilot-agent cannot verify is replaced by its deny-all filter, which the test proxy runs.
func TestInjectedSidecar(t *testing.T) {
	n := sharedNode(t)
	ctx := context.Background()
	cs := n.Clientset
	pctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	start := time.Now()
	ref, err := n.PushProxyV2(pctx, node.IstioTag)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("proxyv2 image %s built and pushed in %.1fs", ref, time.Since(start).Seconds())
	installIstio(t, n)

	ns := newNamespace(t, cs, "meshed")
	t.Cleanup(func() { _ = cs.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	if _, err := n.Kubectl(ctx, "label", "namespace", ns, "istio-injection=enabled"); err != nil {
		t.Fatal(err)
	}
	image := pushDetails(t, n)
	for _, app := range []string{"details", "productpage"} {
		d := detailsDeployment(ns, app+"-v1", image, 1)
		d.Spec.Template.Labels["app"], d.Spec.Selector.MatchLabels["app"] = app, app
		if _, err := cs.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: app},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": app},
				Ports: []corev1.ServicePort{{Name: "http", Port: 9080, TargetPort: intstr.FromInt32(9080)}}},
		}
		if _, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	start = time.Now()
	for _, d := range []string{"details-v1", "productpage-v1"} {
		if err := waitDeploymentReady(ctx, cs, ns, d, 5*time.Minute); err != nil {
			t.Fatalf("%v\n%s", err, proxyLogs(ctx, n, ns, d))
		}
	}
	t.Logf("meshed pods Ready %.1fs after their Deployments", time.Since(start).Seconds())
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		proxy := containerOf(&p.Spec, "istio-proxy")
		if proxy == nil || proxy.Image != n.RegistryHost+"/proxyv2:"+node.IstioTag {
			t.Fatalf("pod %s: istio-proxy %+v", p.Name, proxy)
		}
		ready := false
		for _, st := range append(p.Status.ContainerStatuses, p.Status.InitContainerStatuses...) {
			if st.Name == "istio-proxy" {
				ready = st.Ready
			}
		}
		if !ready {
			t.Errorf("pod %s: istio-proxy not ready", p.Name)
		}
	}

	inbound := func() int {
		out, err := n.Kubectl(ctx, "exec", "-n", ns, "deploy/details-v1", "-c", "istio-proxy", "--",
			"curl", "-sS", "http://127.0.0.1:15000/stats?filter=^http.inbound.downstream_rq_total$")
		if err != nil {
			t.Fatalf("details' admin stats: %v: %s", err, out)
		}
		m := regexp.MustCompile(`downstream_rq_total: (\d+)`).FindStringSubmatch(out)
		if m == nil {
			return 0
		}
		v, _ := strconv.Atoi(m[1])
		return v
	}
	// pilot-agent's merged metrics (15020) include the proxy's, scraped from the bootstrap's
	// 15090 listener, which the stand-in routes to its admin /stats/prometheus.
	if out, err := n.Kubectl(ctx, "exec", "-n", ns, "deploy/details-v1", "-c", "istio-proxy", "--",
		"curl", "-sS", "http://127.0.0.1:15020/stats/prometheus"); err != nil || !strings.Contains(out, "envoy_server_state 0") ||
		!strings.Contains(out, "istio_agent_") {
		t.Errorf("pilot-agent's merged metrics: %v: %.500s", err, out)
	}
	before := inbound()
	// The seed's command, verbatim but for the namespace. kube-proxy may not have programmed
	// the new Service yet (connection refused before the request leaves the client pod): retry
	// for a bounded time.
	var out string
	for deadline := time.Now().Add(time.Minute); ; {
		out, err = n.Kubectl(ctx, "exec", "-n", ns, "deploy/productpage-v1", "-c", "istio-proxy", "--",
			"curl", "-I", "http://details."+ns+":9080/details/123")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubectl exec ... curl -I: %v: %s", err, out)
		}
		time.Sleep(time.Second)
	}
	if !strings.Contains(out, "HTTP/1.1 200") || !strings.Contains(strings.ToLower(out), "content-type: application/json") {
		t.Fatalf("curl -I through the sidecars: %s", out)
	}
	t.Logf("kubectl exec -c istio-proxy -- curl -I:\n%s", strings.TrimSpace(out))
	if after := inbound(); after != before+1 {
		t.Errorf("details' inbound listener counted %d requests during the exec'd curl, want 1 (redirected to 15006)", after-before)
	}

	// ECDS (issue 15's delivery): the Wasm filter as an extension config whose module is a
	// remote http_uri, served here on the host end of the node's veth. pilot-agent fetches it,
	// checks its sha256, writes it into the pod and rewrites the config to that local file; the
	// test proxy loads it from there. No pod restarts.
	mod, sum := pushFilter(t, n)
	ln, err := net.Listen("tcp", node.HostIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	var fetches atomic.Int32
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/sha256/"+sum {
			http.NotFound(w, r)
			return
		}
		fetches.Add(1)
		_, _ = w.Write(mod)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	const id = "ecds-node"
	ef, err := istio.BuildECDSEnvoyFilter(istio.Filter{
		Name: "details-ecds", Namespace: ns,
		WorkloadLabels: map[string]string{"app": "details"},
		ID:             id, RootID: "add_header", ModuleSHA256: sum,
		Config:  wasmev1.FilterConfig{TypeURL: wasmev1.StringValueType, Value: []byte(`{"name":"x-ecds","value":"yes"}`)},
		Context: "SIDECAR_INBOUND", Shape: istio.TypedShape,
		ModuleURL: istio.ModuleURL("http://"+ln.Addr().String(), sum),
	})
	if err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(ef)
	if err != nil {
		t.Fatal(err)
	}
	efFile := filepath.Join(t.TempDir(), "envoyfilter.json")
	if err := os.WriteFile(efFile, js, 0o644); err != nil {
		t.Fatal(err)
	}
	uids := map[string]string{}
	for _, p := range pods.Items {
		uids[p.Name] = string(p.UID)
	}
	if out, err := n.Kubectl(ctx, "apply", "-f", efFile); err != nil {
		t.Fatalf("kubectl apply the ECDS EnvoyFilter: %v: %s", err, out)
	}
	start = time.Now()
	deadline := start.Add(2 * time.Minute)
	for {
		out, err = n.Kubectl(ctx, "exec", "-n", ns, "deploy/productpage-v1", "-c", "istio-proxy", "--",
			"curl", "-sS", "-I", "http://details."+ns+":9080/details/123")
		if err == nil && strings.Contains(strings.ToLower(out), "x-ecds: yes") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no x-ecds header through ECDS (module fetched %d times): %v %s\n%s", fetches.Load(), err, out, proxyLogs(ctx, n, ns, "details-v1"))
		}
		time.Sleep(time.Second)
	}
	t.Logf("ECDS filter active %.1fs after kubectl apply (module fetched %d times)", time.Since(start).Seconds(), fetches.Load())
	if fetches.Load() < 1 {
		t.Errorf("the module was never fetched from its URL")
	}
	after, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range after.Items {
		if uids[p.Name] != string(p.UID) {
			t.Errorf("pod %s was replaced by the ECDS filter", p.Name)
		}
		for _, st := range append(p.Status.ContainerStatuses, p.Status.InitContainerStatuses...) {
			if st.RestartCount != 0 {
				t.Errorf("pod %s container %s restarted %d times", p.Name, st.Name, st.RestartCount)
			}
		}
	}
	if len(after.Items) != len(uids) {
		t.Errorf("%d pods after the ECDS filter, %d before", len(after.Items), len(uids))
	}

	// A module pilot-agent cannot verify (the URL serves the seed's module, the EnvoyFilter
	// names another sha256): istio-agent puts its deny-all RBAC filter in the Wasm filter's
	// place (fail strategy FailClose, the default), which the test proxy runs: 403. Removing
	// the EnvoyFilter lets requests through again.
	bad, err := istio.BuildECDSEnvoyFilter(istio.Filter{
		Name: "details-ecds-bad", Namespace: ns,
		WorkloadLabels: map[string]string{"app": "details"},
		ID:             "ecds-bad", RootID: "add_header", ModuleSHA256: strings.Repeat("0", 64),
		Config:  wasmev1.FilterConfig{TypeURL: wasmev1.StringValueType, Value: []byte(`{"name":"x-bad","value":"yes"}`)},
		Context: "SIDECAR_INBOUND", Shape: istio.TypedShape,
		ModuleURL: istio.ModuleURL("http://"+ln.Addr().String(), sum),
	})
	if err != nil {
		t.Fatal(err)
	}
	if js, err = json.Marshal(bad); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(efFile, js, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := n.Kubectl(ctx, "apply", "-f", efFile); err != nil {
		t.Fatalf("kubectl apply: %v: %s", err, out)
	}
	status := func() string {
		out, _ := n.Kubectl(ctx, "exec", "-n", ns, "deploy/productpage-v1", "-c", "istio-proxy", "--",
			"curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "http://details."+ns+":9080/details/123")
		return strings.TrimSpace(out)
	}
	waitStatus := func(want, what string) {
		t.Helper()
		for deadline := time.Now().Add(2 * time.Minute); ; {
			got := status()
			if strings.HasSuffix(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: status %q, want %s\n%s", what, got, want, proxyLogs(ctx, n, ns, "details-v1"))
			}
			time.Sleep(time.Second)
		}
	}
	waitStatus("403", "a module whose sha256 does not match (istio-agent's deny-all in its place)")
	if out, err := n.Kubectl(ctx, "delete", "-f", efFile); err != nil {
		t.Fatalf("kubectl delete: %v: %s", err, out)
	}
	waitStatus("200", "after removing the unverifiable filter")
}

// proxyLogs is the end of the istio-proxy and istio-init logs of the Deployment's pods, for
// failure messages.
func proxyLogs(ctx context.Context, n *node.Node, ns, deploy string) string {
	var sb strings.Builder
	for _, c := range []string{"istio-init", "istio-proxy"} {
		out, _ := n.Kubectl(ctx, "logs", "-n", ns, "deploy/"+deploy, "-c", c, "--tail=40")
		sb.WriteString("--- " + c + ":\n" + out + "\n")
	}
	return sb.String()
}
