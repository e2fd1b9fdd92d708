// Command wasme-bench runs wasme's benchmarks (`make bench`): it prints the table and writes it
// as JSON, by default to bench/results/latest.json (only the latest run is kept).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"wasme.io/wasme/internal/validation"

	"wasme.io/wasme/bench"
	"wasme.io/wasme/internal/testing/tools"
)

func main() {
	validation.ServeChildIfAsked() // the in-process operator's validation children
	quick := flag.Bool("quick", false, "run every row at a tiny size (what make test does)")
	rows := flag.String("rows", "", "comma-separated row numbers to run (default: all)")
	out := flag.String("out", filepath.Join(tools.RepoRoot(), "bench", "results", "latest.json"), `JSON output file; "" writes none`)
	wasme := flag.String("wasme", "", "wasme binary to run as a process (default: build one)")
	flag.Parse()

	cfg := bench.Full()
	if *quick {
		cfg = bench.Quick()
	}
	cfg.Progress = os.Stderr
	if *wasme != "" {
		// The bench runs it from other directories.
		abs, err := filepath.Abs(*wasme)
		if err != nil {
			fmt.Fprintln(os.Stderr, "wasme-bench:", err)
			os.Exit(2)
		}
		cfg.Wasme = abs
	}
	for _, r := range strings.Split(*rows, ",") {
		if r = strings.TrimSpace(r); r == "" {
			continue
		}
		n, err := strconv.Atoi(r)
		if err != nil || n < 1 || n > 7 {
			fmt.Fprintf(os.Stderr, "wasme-bench: -rows: %q is not a row number 1-7\n", r)
			os.Exit(2)
		}
		cfg.Rows = append(cfg.Rows, n)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := bench.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "wasme-bench:", err)
		os.Exit(1)
	}
	rep.Print(os.Stdout)
	if *out != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			fmt.Fprintln(os.Stderr, "wasme-bench:", err)
			os.Exit(1)
		}
		if err := os.WriteFile(*out, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "wasme-bench:", err)
			os.Exit(1)
		}
		fmt.Fprintln(os.Stderr, "wrote", *out)
	}
	if len(rep.Errors) > 0 {
		os.Exit(1)
	}
}
