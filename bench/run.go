package bench

import (
	"context"
	"fmt"
	"github.com/go-logr/logr"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"strings"
	"time"

	"wasme.io/wasme/internal/testing/tools"
	"wasme.io/wasme/internal/testing/wasmbuild"
)

// ApplyCase is one size of row 1: Workloads Deployments spread evenly over Namespaces, one
// FilterDeployment per namespace, applied Runs times.
type ApplyCase struct {
	Workloads, Namespaces, Runs int
}

// Config sets the sizes of every row. Full is what `make bench` runs; Quick is the tiny run
// of `make test`.
type Config struct {
	Quick bool
	// Apply are row 1's warm-cache cases; the last one stays applied for row 2's memory figure.
	Apply []ApplyCase
	// ColdRuns is how many cold-cache rollouts (a new digest each) row 1 measures on Nodes nodes.
	ColdRuns, Nodes int
	// EgressNodes are row 3's node counts (the first must be Nodes).
	EgressNodes []int
	// Unrelated is how many unrelated objects (half Deployments, half ConfigMaps) row 2 adds
	// for the memory figure.
	Unrelated int
	// SteadyWindow is how long row 2 counts writes after an operator restart.
	SteadyWindow time.Duration
	// MemoryIdle is how long the operator process must have had nothing to do before its
	// memory is read.
	MemoryIdle time.Duration
	// PushPullSizes are row 4's module sizes, each pushed and pulled PushPullReps times.
	PushPullSizes []int
	PushPullReps  int
	// ServeSize is row 5's module size; ServeConcurrency its client counts, each for ServeFor.
	ServeSize        int
	ServeConcurrency []int
	ServeFor         time.Duration
	// FilterConcurrency and FilterFor are row 6's clients and duration.
	FilterConcurrency []int
	FilterFor         time.Duration
	// FanoutNodes simulated node caches watch one rollout over FanoutWorkloads workloads (row 7).
	FanoutNodes, FanoutWorkloads int
	// Wasme is the wasme binary (rows 2, 4, 5); empty builds one into the work directory.
	Wasme string
	// Rows limits the run to these row numbers; empty means all.
	Rows []int
	// Progress receives one line per step; nil discards it.
	Progress io.Writer
}

// Full is the configuration of `make bench`.
func Full() Config {
	return Config{
		Apply:             []ApplyCase{{10, 1, 10}, {100, 1, 5}, {1000, 10, 3}},
		ColdRuns:          3,
		Nodes:             3,
		EgressNodes:       []int{3, 10},
		Unrelated:         10000,
		SteadyWindow:      10 * time.Second,
		MemoryIdle:        2 * time.Second,
		PushPullSizes:     []int{1 << 20, 20 << 20},
		PushPullReps:      5,
		ServeSize:         2 << 20,
		ServeConcurrency:  []int{1, 16},
		ServeFor:          4 * time.Second,
		FilterConcurrency: []int{1, 16},
		FilterFor:         4 * time.Second,
		FanoutNodes:       100,
		FanoutWorkloads:   10,
	}
}

// Quick is every row at a size that only proves it still runs.
func Quick() Config {
	return Config{
		Quick:             true,
		Apply:             []ApplyCase{{2, 1, 1}, {4, 2, 1}},
		ColdRuns:          1,
		Nodes:             2,
		EgressNodes:       []int{2},
		Unrelated:         20,
		SteadyWindow:      time.Second,
		MemoryIdle:        300 * time.Millisecond,
		PushPullSizes:     []int{64 << 10},
		PushPullReps:      1,
		ServeSize:         64 << 10,
		ServeConcurrency:  []int{2},
		ServeFor:          200 * time.Millisecond,
		FilterConcurrency: []int{2},
		FilterFor:         200 * time.Millisecond,
		FanoutNodes:       5,
		FanoutWorkloads:   2,
	}
}

func (c *Config) wants(row int) bool {
	if len(c.Rows) == 0 {
		return true
	}
	for _, r := range c.Rows {
		if r == row {
			return true
		}
	}
	return false
}

// Run measures every row and returns the report; a row that fails is listed in Errors and the
// others still run.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	start := time.Now()
	// controller-runtime complains on stderr when no logger is set; the operator logs to a file.
	ctrllog.SetLogger(logr.Discard())
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	rep := &Report{Date: start.UTC().Format(time.RFC3339), Quick: cfg.Quick, Machine: machine(), Versions: versions()}
	dir, err := os.MkdirTemp("", "wasme-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	// nginx's workers run as an unprivileged user and must reach the served file.
	_ = os.Chmod(dir, 0o755)

	fail := func(row int, err error) {
		rep.Errors = append(rep.Errors, fmt.Sprintf("row %d: %v", row, err))
		fmt.Fprintf(cfg.Progress, "!! row %d: %v\n", row, err)
	}
	if cfg.Wasme == "" && (cfg.wants(2) || cfg.wants(4) || cfg.wants(5)) {
		fmt.Fprintln(cfg.Progress, "==> building the wasme binary")
		cfg.Wasme = filepath.Join(dir, "wasme")
		cmd := exec.Command("go", "build", "-o", cfg.Wasme, "./cmd/wasme")
		cmd.Dir = tools.RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("building wasme: %w\n%s", err, out)
		}
	}

	fmt.Fprintln(cfg.Progress, "==> building examples/filters/custom-header (GOOS=wasip1)")
	module, err := wasmbuild.Example("custom-header")
	if err != nil {
		return nil, err
	}
	if cfg.wants(1) || cfg.wants(2) || cfg.wants(3) || cfg.wants(5) || cfg.wants(7) {
		e, err := startEnv(ctx, dir, module, cfg.Progress)
		if err != nil {
			return nil, err
		}
		c := &clusterRows{e: e, cfg: cfg, rep: rep}
		if err := c.run(ctx); err != nil {
			fail(c.current, err)
		}
		if cfg.wants(5) {
			if rows, skipped, err := serveRows(ctx, e, cfg, dir); err != nil {
				fail(5, err)
			} else {
				rep.Rows = append(rep.Rows, rows...)
				rep.Skipped = append(rep.Skipped, skipped...)
			}
		}
		e.stop()
	}
	if cfg.wants(4) {
		if rows, err := pushPullRows(ctx, cfg, dir); err != nil {
			fail(4, err)
		} else {
			rep.Rows = append(rep.Rows, rows...)
		}
	}
	if cfg.wants(6) {
		if rows, err := filterRows(ctx, cfg, module); err != nil {
			fail(6, err)
		} else {
			rep.Rows = append(rep.Rows, rows...)
		}
	}
	sortRows(rep.Rows)
	rep.Machine.LoadAfter = loadAvg()
	rep.Seconds = time.Since(start).Seconds()
	return rep, nil
}

func sortRows(rows []Row) {
	// Stable by row number: each row's cases keep the order they were measured in.
	for i := 1; i < len(rows); i++ {
		for j := i; j > 0 && rows[j].Row < rows[j-1].Row; j-- {
			rows[j], rows[j-1] = rows[j-1], rows[j]
		}
	}
}

// versions of everything measured, read from the tools themselves or their pins.
func versions() map[string]string {
	v := map[string]string{
		"go":    strings.TrimPrefix(commandVersion("go", "env", "GOVERSION"), "go"),
		"nginx": commandVersion("nginx", "-v"),
		"wasme": commandVersion("git", "-C", tools.RepoRoot(), "describe", "--always", "--dirty"),
	}
	// The pinned tools' versions are their modules' in hack/tools.
	for tool, mod := range map[string]string{"etcd": "go.etcd.io/etcd/server/v3", "kube-apiserver": "k8s.io/kubernetes", "oras": "oras.land/oras", "istio": "istio.io/istio", "registry": "github.com/distribution/distribution/v3"} {
		dir := tool
		if tool == "istio" {
			dir = "istiod"
		}
		b, err := os.ReadFile(filepath.Join(tools.RepoRoot(), "hack", "tools", dir, "go.mod"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == mod {
				v[tool] = f[1]
			}
		}
	}
	return v
}
