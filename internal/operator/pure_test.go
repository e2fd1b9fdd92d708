package operator

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	apinetworking "istio.io/api/networking/v1alpha3"
	networkingv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/istio"
)

func TestDeliveryFor(t *testing.T) {
	for _, tc := range []struct {
		spec    wasmev1.Delivery
		version istio.Version
		want    wasmev1.Delivery
		msg     string // substring of the status message, or of the error when want is ""
	}{
		{spec: "", version: istio.Version{Major: 1, Minor: 5}, want: wasmev1.DeliveryMount, msg: "auto does not pick ECDS yet"},
		{spec: wasmev1.DeliveryAuto, version: istio.Version{Major: 1, Minor: 5}, want: wasmev1.DeliveryMount, msg: "auto does not pick ECDS yet"},
		{spec: wasmev1.DeliveryAuto, version: istio.Version{Major: 1, Minor: 24}, want: wasmev1.DeliveryMount, msg: "auto does not pick ECDS yet"},
		{spec: wasmev1.DeliveryMount, version: istio.Version{Major: 1, Minor: 24}, want: wasmev1.DeliveryMount, msg: "spec.delivery is mount"},
		{spec: wasmev1.DeliveryECDS, version: istio.Version{Major: 1, Minor: 24}, want: wasmev1.DeliveryECDS, msg: "spec.delivery is ecds"},
		{spec: wasmev1.DeliveryECDS, version: istio.Version{Major: 1, Minor: 12}, want: wasmev1.DeliveryECDS, msg: "spec.delivery is ecds"},
		{spec: wasmev1.DeliveryECDS, version: istio.Version{Major: 1, Minor: 11}, msg: "needs Istio 1.12 or later"},
		{spec: wasmev1.DeliveryECDS, version: istio.Version{Major: 1, Minor: 5}, msg: "found 1.5"},
		{spec: "push", version: istio.Version{Major: 1, Minor: 24}, msg: `spec.delivery "push": must be auto, ecds or mount`},
	} {
		t.Run(fmt.Sprintf("%s on %s", tc.spec, tc.version), func(t *testing.T) {
			got, msg, err := deliveryFor(tc.spec, tc.version)
			if tc.want == "" {
				if err == nil || !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("deliveryFor = %q, %q, %v; want an error containing %q", got, msg, err, tc.msg)
				}
				return
			}
			if err != nil || got != tc.want || !strings.Contains(msg, tc.msg) {
				t.Fatalf("deliveryFor = %q, %q, %v; want %q and a message containing %q", got, msg, err, tc.want, tc.msg)
			}
		})
	}
}

func TestMergeVolumes(t *testing.T) {
	const ours = UserVolume
	for _, tc := range []struct {
		name, user, want, err string
	}{
		{name: "none", user: "", want: ours},
		{name: "blank", user: "  ", want: ours},
		{name: "user list kept, ours appended", user: `[{"name":"certs","secret":{"secretName":"x"}}]`,
			want: `[{"name":"certs","secret":{"secretName":"x"}},{"name":"cache-dir","hostPath":{"path":"/var/local/lib/wasme-cache"}}]`},
		{name: "same entry already there", user: `[{"hostPath":{"path":"/var/local/lib/wasme-cache"},"name":"cache-dir"}]`,
			want: `[{"hostPath":{"path":"/var/local/lib/wasme-cache"},"name":"cache-dir"}]`},
		{name: "other entry with our name", user: `[{"name":"cache-dir","emptyDir":{}}]`, err: "different entry named cache-dir"},
		{name: "not a list", user: `{"name":"x"}`, err: "not a JSON list"},
		{name: "list of non-objects", user: `[1,2]`, err: "not a JSON list of objects"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := mergeVolumes(tc.user, ours)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("mergeVolumes(%q) = %q, %v; want %q", tc.user, got, err, tc.want)
			}
		})
	}
}

func TestOriginals(t *testing.T) {
	for _, tc := range []struct {
		name string
		w    workload
		want map[string]string
		err  bool
	}{
		{name: "unpatched, no annotations", w: workload{}, want: map[string]string{}},
		{name: "unpatched, the user's own", w: workload{templateAnnotations: map[string]string{UserVolumeAnnotation: "[]", "other": "x"}},
			want: map[string]string{UserVolumeAnnotation: "[]"}},
		{name: "patched: the record wins over the current merge",
			w: workload{annotations: map[string]string{OriginalAnnotation: `{"sidecar.istio.io/userVolume":"[1]"}`},
				templateAnnotations: map[string]string{UserVolumeAnnotation: "merged"}},
			want: map[string]string{UserVolumeAnnotation: "[1]"}},
		{name: "patched, user had none", w: workload{annotations: map[string]string{OriginalAnnotation: `{}`},
			templateAnnotations: map[string]string{UserVolumeAnnotation: UserVolume}}, want: map[string]string{}},
		{name: "broken record", w: workload{annotations: map[string]string{OriginalAnnotation: `[`}}, err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := originals(tc.w)
			if tc.err != (err != nil) {
				t.Fatalf("err = %v", err)
			}
			if !tc.err && fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("originals = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestSelects(t *testing.T) {
	fd := func(kind string, labels map[string]wasmev1.LabelValue) *wasmev1.FilterDeployment {
		f := &wasmev1.FilterDeployment{ObjectMeta: metav1.ObjectMeta{Namespace: "ns"}}
		f.Spec.Deployment.Istio.Kind = kind
		f.Spec.Deployment.Istio.Labels = labels
		return f
	}
	w := workload{kind: "Deployment", name: "d", namespace: "ns", labels: map[string]string{"app": "a"},
		templateLabels: map[string]string{"app": "a", "version": "v1"}}
	for _, tc := range []struct {
		name string
		fd   *wasmev1.FilterDeployment
		w    workload
		want bool
	}{
		{"no labels selects every workload of the kind", fd("", nil), w, true},
		{"kind in any case", fd("deployment", nil), w, true},
		{"other kind", fd("DaemonSet", nil), w, false},
		{"other namespace", fd("", nil), workload{kind: "Deployment", namespace: "other"}, false},
		{"own labels", fd("", map[string]wasmev1.LabelValue{"app": "a"}), w, true},
		{"template labels only", fd("", map[string]wasmev1.LabelValue{"version": "v1"}), w, true},
		{"split across own and template does not count", fd("", map[string]wasmev1.LabelValue{"app": "a", "version": "v1"}),
			workload{kind: "Deployment", namespace: "ns", labels: map[string]string{"app": "a"}, templateLabels: map[string]string{"version": "v1"}}, false},
		{"value differs", fd("", map[string]wasmev1.LabelValue{"app": "b"}), w, false},
		{"unknown kind", fd("CronJob", nil), w, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := selects(tc.fd, tc.w); got != tc.want {
				t.Fatalf("selects = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestSameEnvoyFilter(t *testing.T) {
	base := func() *networkingv1alpha3.EnvoyFilter {
		ef := &networkingv1alpha3.EnvoyFilter{}
		ef.Labels = map[string]string{"a": "b"}
		ef.Annotations = map[string]string{WorkloadAnnotation: "Deployment/x", "kubectl": "ignored"}
		ef.Spec.WorkloadSelector = &apinetworking.WorkloadSelector{Labels: map[string]string{"app": "x"}}
		return ef
	}
	for _, tc := range []struct {
		name   string
		mutate func(*networkingv1alpha3.EnvoyFilter)
		want   bool
	}{
		{"identical", func(*networkingv1alpha3.EnvoyFilter) {}, true},
		{"other annotations do not count", func(ef *networkingv1alpha3.EnvoyFilter) { ef.Annotations["kubectl"] = "changed" }, true},
		{"spec differs", func(ef *networkingv1alpha3.EnvoyFilter) { ef.Spec.WorkloadSelector.Labels["app"] = "y" }, false},
		{"labels differ", func(ef *networkingv1alpha3.EnvoyFilter) { ef.Labels["a"] = "c" }, false},
		{"workload differs", func(ef *networkingv1alpha3.EnvoyFilter) { ef.Annotations[WorkloadAnnotation] = "Deployment/y" }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cur := base()
			tc.mutate(cur)
			if got := sameEnvoyFilter(cur, base()); got != tc.want {
				t.Fatalf("sameEnvoyFilter = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestFilterSelector(t *testing.T) {
	w := workload{templateLabels: map[string]string{"app": "a"}}
	got := filterSelector(w)
	if got["app"] != "a" || got[CacheMountedLabel] != "true" || len(got) != 2 {
		t.Fatalf("filterSelector = %v", got)
	}
	if _, ok := w.templateLabels[CacheMountedLabel]; ok {
		t.Fatal("filterSelector changed the workload's labels")
	}
	if got := filterSelector(workload{}); got[CacheMountedLabel] != "true" {
		t.Fatalf("filterSelector without labels = %v", got)
	}
}

func TestOutcomeOf(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name string
		res  stepResult
		err  error
		want outcome
	}{
		{"success keeps the requeue", stepResult{time.Minute}, nil, outcome{handled: true, requeueAfter: time.Minute}},
		{"stalled counts as handled, no retry", stepResult{time.Minute}, stalling("R", boom),
			outcome{reason: "R", message: "boom", stalled: true, handled: true, requeueAfter: time.Minute}},
		{"waiting takes the sooner requeue", stepResult{time.Minute}, waiting("W", time.Second, boom),
			outcome{reason: "W", message: "boom", requeueAfter: time.Second}},
		{"waiting on a watch", stepResult{}, waiting("W", 0, boom), outcome{reason: "W", message: "boom"}},
		{"wrapped waiting", stepResult{}, fmt.Errorf("ctx: %w", waiting("W", 0, boom)), outcome{reason: "W", message: "ctx: boom"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := outcomeOf(tc.res, tc.err); got != tc.want {
				t.Fatalf("outcomeOf = %+v, want %+v", got, tc.want)
			}
		})
	}
	// Failures are retried with backoff: the error goes back to the work queue.
	g := failed("F", boom)
	// Identity, not errors.Is: the step's error must reach the work queue as it is.
	if o := outcomeOf(stepResult{time.Minute}, g); o.reason != "F" || o.retErr != g || o.handled || o.requeueAfter != 0 { //nolint:errorlint // identity, see above
		t.Fatalf("failed: %+v", o)
	}
	if o := outcomeOf(stepResult{}, boom); o.reason != wasmev1.ProgressingReason || o.retErr != boom { //nolint:errorlint // identity, see above
		t.Fatalf("plain error: %+v", o)
	}
}

func TestListSome(t *testing.T) {
	items := func(n, size int) []string {
		var out []string
		for i := range n {
			out = append(out, fmt.Sprintf("w%03d: %s", i, strings.Repeat("x", size)))
		}
		return out
	}
	if got := listSome(items(2, 1)); got != "w000: x; w001: x" {
		t.Fatalf("two items: %q", got)
	}
	got := listSome(items(300, 10))
	if !strings.HasSuffix(got, fmt.Sprintf(" … and %d more", 300-maxListed)) || strings.Count(got, "; ") != maxListed-1 {
		t.Fatalf("300 items: %q", got)
	}
	got = listSome(items(50, 1000))
	if len(got) > maxMessageBytes+32 || !strings.Contains(got, "more") {
		t.Fatalf("long items: %d bytes, %q", len(got), got[len(got)-40:])
	}
	if got := listSome(items(1, 10_000)); !strings.HasSuffix(got, "… and 1 more") {
		t.Fatalf("one huge item: %q", got)
	}
}

func TestTruncate(t *testing.T) {
	if got := truncate("short", 10); got != "short" {
		t.Fatal(got)
	}
	s := strings.Repeat("é", 100) // two bytes each
	got := truncate(s, 51)
	if len(got) > 51 || !utf8.ValidString(got) || !strings.HasSuffix(got, " …") {
		t.Fatalf("truncate = %q (%d bytes)", got, len(got))
	}
}

// CacheVolumes gives the original's annotation values for the default directory, and the same
// shape for another.
func TestCacheVolumes(t *testing.T) {
	if v, m := CacheVolumes(wasmev1.CacheDir); v != UserVolume || m != UserVolumeMount {
		t.Errorf("default directory: %s %s", v, m)
	}
	v, m := CacheVolumes(`/srv/a "b"`)
	if v != `[{"name":"cache-dir","hostPath":{"path":"/srv/a \"b\""}}]` || m != `[{"mountPath":"/srv/a \"b\"","name":"cache-dir","readOnly":true}]` {
		t.Errorf("other directory: %s %s", v, m)
	}
}
