package localcluster

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	networkingv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/config/samples"
	"wasme.io/wasme/internal/testing/wasmbuild"
	"wasme.io/wasme/internal/testing/xdsproxy"
	"wasme.io/wasme/pkg/wasmimage"
)

// SeedResult is what the walkthrough measured.
type SeedResult struct {
	// Sidecar is the details-v1 test proxy, still running (the caller closes it).
	Sidecar *xdsproxy.Proxy
	// ApplyToHeader is the time from applying the FilterDeployment to the first response
	// through the sidecar carrying the header.
	ApplyToHeader time.Duration
	// ApplyToPush is the part until the sidecar received the listener push with the filter
	// (operator: resolve, pull, validate, node caches, EnvoyFilters; then istiod's debounce and
	// push); the rest is the sidecar starting the filter and the request.
	ApplyToPush time.Duration
}

// SeedWalkthrough does the seed article's walkthrough on a cluster where DeployBookinfo and
// StartWasme ran, printing each step to out as the article shows it: the wasme components,
// the response headers before, the FilterDeployment applied, the EnvoyFilters, one of them as
// YAML, the FilterDeployment's status, and the response headers after. It fails if the header
// does not show up.
func (c *Cluster) SeedWalkthrough(ctx context.Context, out io.Writer) (*SeedResult, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	p := func(format string, args ...any) { fmt.Fprintf(out, format, args...) }

	p("\n$ kubectl get all -n wasme\n")
	if err := c.printWasme(ctx, out); err != nil {
		return nil, err
	}

	p("\n$ wasme build (examples/filters/custom-header) && wasme push %s/ryysud/custom-header:v0.1\n", c.Registry.Host)
	mod, err := wasmbuild.Example("custom-header")
	if err != nil {
		return nil, err
	}
	ref := c.Registry.Host + "/ryysud/custom-header:v0.1"
	pushed, err := wasmimage.Push(ctx, ref, mod, wasmimage.RuntimeConfig{RootIDs: []string{"add_header"}}, wasmimage.WithCAPEM(c.Registry.CAPEM))
	if err != nil {
		return nil, err
	}
	p("pushed %s\n  manifest %s\n  module   %s (%d bytes)\n", ref, pushed.ManifestDigest, pushed.ModuleDigest, len(mod))

	sidecar, err := c.StartSidecar(ctx, BookinfoNamespace, "details-v1", SidecarOptions{Upstream: DetailsApp})
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			_ = sidecar.Close()
		}
	}()
	if _, err := sidecar.WaitFor(ctx, func(*xdsproxy.Chain) bool { return true }); err != nil {
		return nil, fmt.Errorf("the details-v1 sidecar got no listeners from istiod: %w", err)
	}
	p("\n# the details-v1 sidecar (wasme's xDS test proxy, fed by istiod at %s) listens on %s\n", c.Istiod.XDSAddr, sidecar.URL())
	p("$ curl -I http://details.bookinfo:9080/details/123   # from the productpage sidecar\n")
	before, err := Head(ctx, sidecar.URL()+"/details/123")
	if err != nil {
		return nil, err
	}
	p("%s", before)

	fdYAML := samples.BookinfoCustomFilter(c.Registry.Host)
	p("\n$ kubectl apply -f - <<EOF\n%sEOF\n", fdYAML)
	fd := &wasmev1.FilterDeployment{}
	if err := yaml.UnmarshalStrict([]byte(fdYAML), fd); err != nil {
		return nil, err
	}
	start := time.Now()
	if err := c.Client.Create(ctx, fd); err != nil {
		return nil, err
	}
	p("filterdeployment.wasme.io/%s created\n", fd.Name)
	if _, err := sidecar.WaitFor(ctx, func(ch *xdsproxy.Chain) bool {
		return slices.ContainsFunc(ch.Wasm, func(w xdsproxy.WasmFilter) bool { return w.Name == "bookinfo-custom-filter.bookinfo" })
	}); err != nil {
		return nil, fmt.Errorf("the filter did not reach the details-v1 sidecar: %w", err)
	}
	after, err := Head(ctx, sidecar.URL()+"/details/123")
	if err != nil {
		return nil, err
	}
	res := &SeedResult{Sidecar: sidecar, ApplyToHeader: time.Since(start)}
	if ups := sidecar.Updates(); len(ups) > 0 {
		res.ApplyToPush = ups[len(ups)-1].Received.Sub(start)
	}
	if !strings.Contains(after, "\nhello: world!\n") {
		return nil, fmt.Errorf("the filter is in the sidecar's chain but the response has no hello header:\n%s", after)
	}
	if err := c.waitReady(ctx, fd); err != nil {
		return nil, err
	}

	p("\n$ kubectl get envoyfilters -n bookinfo\n")
	var efs networkingv1alpha3.EnvoyFilterList
	if err := c.Client.List(ctx, &efs, client.InNamespace(BookinfoNamespace)); err != nil {
		return nil, err
	}
	sort.Slice(efs.Items, func(i, j int) bool { return efs.Items[i].Name < efs.Items[j].Name })
	tw := tabwriter.NewWriter(out, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "NAME\tAGE")
	for _, ef := range efs.Items {
		fmt.Fprintf(tw, "%s\t%s\n", ef.Name, age(ef.CreationTimestamp))
	}
	_ = tw.Flush()

	for _, ef := range efs.Items {
		if !strings.HasPrefix(ef.Name, "details-v1-") {
			continue
		}
		p("\n$ kubectl get envoyfilter %s -n bookinfo -o yaml\n", ef.Name)
		ef.ManagedFields = nil
		b, err := yaml.Marshal(ef)
		if err != nil {
			return nil, err
		}
		p("%s", b)
	}

	p("\n$ kubectl get filterdeployment %s -n bookinfo -o yaml   # status\n", fd.Name)
	if err := c.Client.Get(ctx, client.ObjectKeyFromObject(fd), fd); err != nil {
		return nil, err
	}
	b, err := yaml.Marshal(map[string]any{"status": fd.Status})
	if err != nil {
		return nil, err
	}
	p("%s", b)

	p("\n$ curl -I http://details.bookinfo:9080/details/123   # from the productpage sidecar\n%s", after)
	p("\n# FilterDeployment applied -> hello header through the sidecar: %s (listener push received after %s)\n",
		res.ApplyToHeader.Round(10*time.Millisecond), res.ApplyToPush.Round(10*time.Millisecond))
	ok = true
	return res, nil
}

// waitReady waits until the FilterDeployment's Ready condition is True for its generation.
func (c *Cluster) waitReady(ctx context.Context, fd *wasmev1.FilterDeployment) error {
	for {
		if err := c.Client.Get(ctx, client.ObjectKeyFromObject(fd), fd); err != nil {
			return err
		}
		cond := apimeta.FindStatusCondition(fd.Status.Conditions, wasmev1.ReadyCondition)
		if cond != nil && cond.Status == metav1.ConditionTrue && fd.Status.ObservedGeneration == fd.Generation {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("FilterDeployment %s not Ready: %w; status: %+v", fd.Name, ctx.Err(), fd.Status)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// DetailsApp stands in for Bookinfo's details service behind the sidecar.
var DetailsApp = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, `{"id":123,"author":"William Shakespeare","year":1595,"type":"paperback","pages":200,"publisher":"PublisherA","language":"English","ISBN-10":"1234567890","ISBN-13":"123-1234567890"}`)
})

// Head sends a HEAD request, as curl -I does, and returns the status line and headers as
// curl prints them (Date left out: it differs on every run).
func Head(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	var sb strings.Builder
	fmt.Fprintf(&sb, "HTTP/1.1 %s\n", resp.Status)
	keys := make([]string, 0, len(resp.Header))
	for k := range resp.Header {
		if k != "Date" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range resp.Header[k] {
			fmt.Fprintf(&sb, "%s: %s\n", strings.ToLower(k), v)
		}
	}
	return sb.String(), nil
}

// printWasme prints the wasme namespace like `kubectl get all -n wasme`.
func (c *Cluster) printWasme(ctx context.Context, out io.Writer) error {
	var pods corev1.PodList
	var dss appsv1.DaemonSetList
	var deps appsv1.DeploymentList
	for _, l := range []client.ObjectList{&pods, &dss, &deps} {
		if err := c.Client.List(ctx, l, client.InNamespace("wasme")); err != nil {
			return err
		}
	}
	tw := tabwriter.NewWriter(out, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "NAME\tREADY\tSTATUS\tRESTARTS\tAGE")
	for _, p := range pods.Items {
		ready := 0
		for _, s := range p.Status.ContainerStatuses {
			if s.Ready {
				ready++
			}
		}
		fmt.Fprintf(tw, "pod/%s\t%d/%d\t%s\t0\t%s\n", p.Name, ready, len(p.Spec.Containers), p.Status.Phase, age(p.CreationTimestamp))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	n := len(c.Nodes)
	fmt.Fprintln(out)
	fmt.Fprintln(tw, "NAME\tDESIRED\tCURRENT\tREADY\tUP-TO-DATE\tAVAILABLE\tNODE SELECTOR\tAGE")
	for _, ds := range dss.Items {
		fmt.Fprintf(tw, "daemonset.apps/%s\t%d\t%d\t%d\t%d\t%d\t<none>\t%s\n", ds.Name, n, n, n, n, n, age(ds.CreationTimestamp))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(out)
	fmt.Fprintln(tw, "NAME\tREADY\tUP-TO-DATE\tAVAILABLE\tAGE")
	for _, d := range deps.Items {
		fmt.Fprintf(tw, "deployment.apps/%s\t1/1\t1\t1\t%s\n", d.Name, age(d.CreationTimestamp))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(out, "# the pods are simulated (no kubelet); wasme operator and %d wasme cache daemon(s) run as part of this program\n", len(c.Nodes))
	return nil
}

func age(t metav1.Time) string { return duration.HumanDuration(time.Since(t.Time)) }
