package bench

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"wasme.io/wasme/internal/validation"
)

// TestQuick runs every row of `make bench` at a tiny size, so the benchmarks cannot rot. It
// checks that each row produced sane values (counts above zero, no errors); it never asserts
// on timings, which depend on the machine and on what else runs.
func TestQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an API server, a registry, nginx and several processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cfg := Quick()
	cfg.Progress = testWriter{t}
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	rep.Print(&b)
	t.Log("\n" + b.String())
	for _, e := range rep.Errors {
		t.Error(e)
	}
	if rep.Machine.Cores < 1 || rep.Versions["go"] == "" {
		t.Errorf("machine %+v, versions %v", rep.Machine, rep.Versions)
	}
	seen := map[int]int{}
	for _, row := range rep.Rows {
		seen[row.Row]++
		if row.Wasme == "" || row.Comparison == "" || len(row.Values) == 0 {
			t.Errorf("row %d %s (%s) is incomplete: %+v", row.Row, row.Name, row.Case, row)
		}
		positive := func(key string, v any) {
			t.Helper()
			if f, ok := number(v); !ok || f <= 0 {
				t.Errorf("row %d %s (%s): %s = %v, want > 0", row.Row, row.Name, row.Case, key, v)
			}
		}
		switch row.Row {
		case 1:
			positive("median_ms", row.Values["median_ms"])
		case 2:
			switch row.Name {
			case "API writes per rollout":
				positive("rollout_writes", row.Values["rollout_writes"])
			case "API writes per steady-state resync":
				positive("passes", row.Values["passes"])
			case "operator peak memory":
				positive("peak_rss_bytes", row.Values["peak_rss_bytes"])
				positive("baseline_peak_rss_bytes", row.Values["baseline_peak_rss_bytes"])
			}
		case 3:
			positive("requests_total", row.Values["requests_total"])
			positive("registry_bytes", row.Values["registry_bytes"])
			positive("node_fetch_bytes", row.Values["node_fetch_bytes"])
		case 4:
			positive("wasme median", summarize(floats(row.Values["wasme_ms"])).Median)
			positive("oras median", summarize(floats(row.Values["oras_ms"])).Median)
		case 5:
			positive("wasme rps", row.Values["wasme"].(map[string]any)["rps"])
		case 6:
			positive("filter rps", row.Values["filter"].(map[string]any)["rps"])
			positive("no-filter rps", row.Values["no_filter"].(map[string]any)["rps"])
		case 7:
			for _, c := range []string{"before", "after"} {
				v := row.Values[c].(map[string]any)
				positive(c+" fd_writes", v["fd_writes"])
				positive(c+" node_watch_events", v["node_watch_events"])
			}
		}
	}
	for r := 1; r <= 7; r++ {
		if seen[r] == 0 {
			t.Errorf("no row %d", r)
		}
	}
}

func number(v any) (float64, bool) {
	switch n := v.(type) {
	case int:
		return float64(n), true
	case int64:
		return float64(n), true
	case float64:
		return n, true
	}
	return 0, false
}

func floats(v any) []float64 {
	xs, _ := v.([]float64)
	return xs
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func TestRequestKey(t *testing.T) {
	for _, tc := range []struct{ method, url, ctype, want string }{
		{"GET", "/apis/apps/v1/namespaces/a/deployments?watch=true", "", "watch deployments"},
		{"GET", "/apis/apps/v1/namespaces/a/deployments", "", "list deployments"},
		{"GET", "/api/v1/namespaces/a/configmaps/x", "", "get configmaps"},
		{"PATCH", "/apis/apps/v1/namespaces/a/deployments/x", "application/apply-patch+yaml", "apply deployments"},
		{"PATCH", "/apis/wasme.io/v1/namespaces/a/filterdeployments/x/status", "application/merge-patch+json", "patch filterdeployments/status"},
		{"POST", "/apis/authentication.k8s.io/v1/tokenreviews", "", "create tokenreviews"},
		{"DELETE", "/apis/networking.istio.io/v1alpha3/namespaces/a/envoyfilters/x", "", "delete envoyfilters"},
		{"GET", "/apis", "", "get /apis"},
		{"GET", "/api/v1/namespaces/a", "", "get namespaces"},
	} {
		r := httptestRequest(tc.method, tc.url, tc.ctype)
		if got := requestKey(r); got != tc.want {
			t.Errorf("%s %s: %q, want %q", tc.method, tc.url, got, tc.want)
		}
	}
	if isWrite("get /apis") || isWrite("watch deployments") || !isWrite("apply deployments") {
		t.Error("isWrite misclassifies")
	}
}

func httptestRequest(method, url, ctype string) *http.Request {
	r := httptest.NewRequest(method, url, nil)
	if ctype != "" {
		r.Header.Set("Content-Type", ctype)
	}
	return r
}

// TestMain lets the in-process operator start this binary as its validation child.
func TestMain(m *testing.M) {
	validation.ServeChildIfAsked()
	os.Exit(m.Run())
}
