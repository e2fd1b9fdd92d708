package bench

import (
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is one run of the benchmarks, as printed and as written to bench/results/latest.json.
type Report struct {
	// Date is when the run started (UTC, RFC 3339).
	Date string `json:"date"`
	// Quick marks a tiny run (make test), whose figures mean nothing.
	Quick bool `json:"quick"`
	// Seconds is how long the whole run took.
	Seconds float64 `json:"seconds"`
	// Machine and Versions say what was measured on and with.
	Machine  Machine           `json:"machine"`
	Versions map[string]string `json:"versions"`
	// Rows are the measurements, in table order.
	Rows []Row `json:"rows"`
	// Skipped lists rows or comparisons not measured, and why.
	Skipped []string `json:"skipped,omitempty"`
	// Errors lists rows that failed; a run with errors is not a result.
	Errors []string `json:"errors,omitempty"`
}

// Machine describes the host.
type Machine struct {
	Cores int    `json:"cores"`
	CPU   string `json:"cpu"`
	OS    string `json:"os"`
	// LoadBefore and LoadAfter are the 1-minute load averages around the run: above the core
	// count, other work shared the machine and the figures are noisy.
	LoadBefore string `json:"loadBefore"`
	LoadAfter  string `json:"loadAfter"`
}

// Row is one line of the table: wasme's figure next to its comparison, measured in the same run.
type Row struct {
	// Row is the row number (1-7); Name and Case say what was measured.
	Row  int    `json:"row"`
	Name string `json:"name"`
	Case string `json:"case"`
	// Wasme and Comparison are the human-readable figures; Ratio relates them where it makes
	// sense ("12x faster", "0.9x").
	Wasme      string `json:"wasme"`
	Comparison string `json:"comparison"`
	Ratio      string `json:"ratio,omitempty"`
	// Note says how the figure was obtained when the table would otherwise mislead.
	Note string `json:"note,omitempty"`
	// Values are the raw numbers behind the strings.
	Values map[string]any `json:"values"`
}

// Print writes the table.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "wasme bench %s (quick=%v), %.0f s; %d cores (%s), %s; load %s -> %s\n",
		r.Date, r.Quick, r.Seconds, r.Machine.Cores, r.Machine.CPU, r.Machine.OS, r.Machine.LoadBefore, r.Machine.LoadAfter)
	var keys []string
	for k := range r.Versions {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var vs []string
	for _, k := range keys {
		vs = append(vs, k+" "+r.Versions[k])
	}
	fmt.Fprintf(w, "versions: %s\n\n", strings.Join(vs, ", "))
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tmeasure\tcase\twasme\tcomparison\tratio")
	for _, row := range r.Rows {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", row.Row, row.Name, row.Case, row.Wasme, row.Comparison, row.Ratio)
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	for _, row := range r.Rows {
		if row.Note != "" {
			fmt.Fprintf(w, "  [%d %s, %s] %s\n", row.Row, row.Name, row.Case, row.Note)
		}
	}
	for _, s := range r.Skipped {
		fmt.Fprintf(w, "  skipped: %s\n", s)
	}
	for _, e := range r.Errors {
		fmt.Fprintf(w, "  ERROR: %s\n", e)
	}
}

func machine() Machine {
	m := Machine{Cores: runtime.NumCPU(), OS: runtime.GOOS + "/" + runtime.GOARCH, LoadBefore: loadAvg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// commandVersion runs a tool's version command and returns its first line.
func commandVersion(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil && len(out) == 0 {
		return "unavailable"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	// Some tools print their own path first (some registries do); keep the version only.
	if fields := strings.Fields(line); len(fields) > 1 && strings.HasPrefix(fields[0], "/") {
		line = strings.Join(fields[1:], " ")
	}
	return line
}

// stats summarizes repeated measurements.
type stats struct {
	N                                int
	Median, P95, P99, Min, Max, Mean float64
}

func summarize(xs []float64) stats {
	if len(xs) == 0 {
		return stats{}
	}
	s := append([]float64{}, xs...)
	slices.Sort(s)
	sum := 0.0
	for _, x := range s {
		sum += x
	}
	return stats{N: len(s), Median: percentile(s, 50), P95: percentile(s, 95), P99: percentile(s, 99), Min: s[0], Max: s[len(s)-1], Mean: sum / float64(len(s))}
}

// percentile of sorted xs, nearest rank: with few runs p95 is the slowest run, which is the
// honest reading.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// human formats a duration in milliseconds with a sensible unit.
func human(msec float64) string {
	switch {
	case msec >= 10000:
		return fmt.Sprintf("%.1f s", msec/1000)
	case msec >= 1000:
		return fmt.Sprintf("%.2f s", msec/1000)
	case msec >= 10:
		return fmt.Sprintf("%.0f ms", msec)
	default:
		return fmt.Sprintf("%.2f ms", msec)
	}
}

func mib(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }

func kib(b float64) string {
	if b >= 1<<20 {
		return mib(b)
	}
	return fmt.Sprintf("%.1f KiB", b/1024)
}
