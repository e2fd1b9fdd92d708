package operator

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"wasme.io/wasme/internal/testing/tools"
)

// TestMetricsDocumented: every operator metric is in docs/metrics.md, and the Grafana dashboard
// in config/ is valid JSON that queries only documented metrics.
func TestMetricsDocumented(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(tools.RepoRoot(), "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []prometheus.Collector{mReady, mProgrammed, mProxies, mApplyToProgrammed, mFailures, mValidation, mPulls, mProxyQueries, mProxyQueryErrors} {
		ch := make(chan *prometheus.Desc, 1)
		c.Describe(ch)
		d := (<-ch).String()
		name := regexp.MustCompile(`fqName: "([a-z_]+)"`).FindStringSubmatch(d)
		if name == nil || !strings.Contains(string(doc), "`"+name[1]+"`") {
			t.Errorf("metric %s is not in docs/metrics.md", d)
		}
	}
	raw, err := os.ReadFile(filepath.Join(tools.RepoRoot(), "config", "grafana", "wasme-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}
	if len(dash.Panels) == 0 {
		t.Fatal("the dashboard has no panels")
	}
	series := regexp.MustCompile(`wasme_[a-z_]+`)
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q queries nothing", p.Title)
		}
		for _, tg := range p.Targets {
			for _, m := range series.FindAllString(tg.Expr, -1) {
				for _, suffix := range []string{"_bucket", "_count", "_sum"} {
					m = strings.TrimSuffix(m, suffix)
				}
				if !strings.Contains(string(doc), "`"+m+"`") && !strings.Contains(string(doc), m+"`") {
					t.Errorf("panel %q queries %s, which docs/metrics.md does not list", p.Title, m)
				}
			}
		}
	}
}
