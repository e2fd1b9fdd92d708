package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"runtime"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"
)

// Sizes are Kubernetes quantities in every command; a bad one is refused with the flag's name,
// on one line, with a non-zero exit.
func TestSizeFlagsAreQuantities(t *testing.T) {
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"operator bytes word":  {[]string{"operator", "--max-module-size", "lots", "--kubeconfig", "/nonexistent"}, `--max-module-size "lots": want a size such as 512Mi or 2G`},
		"operator zero":        {[]string{"operator", "--max-module-size", "0", "--kubeconfig", "/nonexistent"}, "--max-module-size 0: must be more than 0"},
		"operator log format":  {[]string{"operator", "--log-format", "xml"}, `--log-format "xml": want json or text`},
		"cache log format":     {[]string{"cache", "--node-name", "n", "--log-format", "xml"}, `--log-format "xml": want json or text`},
		"pull negative size":   {[]string{"pull", "registry.example.com/f:v1", "--max-size", "-1Mi"}, `--max-size "-1Mi": must not be negative`},
		"pull size not a size": {[]string{"pull", "registry.example.com/f:v1", "--max-size", "10 MB"}, `--max-size "10 MB"`},
		"run memory in MiB":    {[]string{"run", "f.wasm", "--upstream", "http://127.0.0.1:1", "--memory-limit", "128"}, "--memory-limit 128: want at least 1Mi"},
		"run memory word":      {[]string{"run", "f.wasm", "--upstream", "http://127.0.0.1:1", "--memory-limit", "lots"}, `--memory-limit "lots": want a size`},
	} {
		t.Run(name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := executeArgs(context.Background(), streams{out: &out, errOut: &errOut}, strings.NewReader(""), tc.args)
			if code == 0 {
				t.Fatalf("exit 0, want an error; stderr %q", errOut.String())
			}
			if got := errOut.String(); !strings.Contains(got, tc.want) || strings.Count(got, "\n") != 1 {
				t.Errorf("stderr %q, want one line containing %q", got, tc.want)
			}
		})
	}
}

func TestErrorsPrintOnOneLine(t *testing.T) {
	var errOut bytes.Buffer
	if code := executeArgs(context.Background(), streams{out: &bytes.Buffer{}, errOut: &errOut}, nil, []string{"no-such-verb"}); code == 0 {
		t.Fatal("an unknown verb exited 0")
	}
	if strings.Count(errOut.String(), "\n") != 1 {
		t.Errorf("stderr %q is not one line", errOut.String())
	}
	if got := oneLine(errors.New("building x: exit 1\n  a.go:1: bad\n\n  b.go:2: worse\n").Error()); got != "building x: exit 1; a.go:1: bad; b.go:2: worse" {
		t.Errorf("oneLine = %q", got)
	}
}

// Shell completion comes from cobra for the three shells the issue names.
func TestCompletion(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish"} {
		var out bytes.Buffer
		if err := Run(context.Background(), []string{"completion", sh}, &out, &out); err != nil {
			t.Fatalf("wasme completion %s: %v", sh, err)
		}
		if !strings.Contains(out.String(), "wasme") || out.Len() < 1000 {
			t.Errorf("wasme completion %s printed %d bytes", sh, out.Len())
		}
	}
}

// objectVerbs print objects or lists; each takes -o table|json|yaml, the others none.
var objectVerbs = []string{
	"wasme build assemblyscript", "wasme build go", "wasme build precompiled", "wasme build rust", "wasme build tinygo",
	"wasme deploy istio", "wasme list", "wasme pull", "wasme push", "wasme sign", "wasme status", "wasme tag", "wasme verify", "wasme version",
}

// TestOutputConvention walks the command tree: every verb that prints objects has the same -o
// flag (values, default, help text, completion, refusal of other values), and no other verb
// has an -o of its own.
func TestOutputConvention(t *testing.T) {
	want := map[string]bool{}
	for _, v := range objectVerbs {
		want[v] = true
	}
	var walk func(c *cobra.Command)
	seen := map[string]bool{}
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			walk(sub)
		}
		path := c.CommandPath()
		f := c.LocalFlags().Lookup("output")
		if !want[path] {
			if f != nil || c.Annotations[outputAnnotation] != "" {
				t.Errorf("%s has -o but is not listed as printing objects", path)
			}
			return
		}
		seen[path] = true
		if f == nil {
			t.Errorf("%s prints objects but has no --output", path)
			return
		}
		if f.Shorthand != "o" || f.DefValue != "table" || f.Usage != outputUsage || f.Value.Type() != "format" {
			t.Errorf("%s: --output is -%s, default %q, type %q, help %q; want -o, table, format, %q", path, f.Shorthand, f.DefValue, f.Value.Type(), f.Usage, outputUsage)
		}
	}
	walk(NewRootCmd(streams{}))
	for _, v := range objectVerbs {
		if !seen[v] {
			t.Errorf("%s is not in the command tree", v)
		}
	}
	for _, v := range objectVerbs {
		args := append(strings.Fields(v)[1:], "-o", "xml")
		t.Run(v, func(t *testing.T) {
			var errOut bytes.Buffer
			if code := executeArgs(context.Background(), streams{out: &bytes.Buffer{}, errOut: &errOut}, strings.NewReader(""), args); code == 0 {
				t.Fatalf("%v exited 0", args)
			}
			if got, want := errOut.String(), "Error: invalid argument \"xml\" for \"-o, --output\" flag: want table, json or yaml\n"; got != want {
				t.Errorf("stderr %q, want %q", got, want)
			}
			// The shell completes the same three values for every verb.
			var out bytes.Buffer
			comp := append([]string{cobra.ShellCompRequestCmd}, strings.Fields(v)[1:]...)
			if err := Run(context.Background(), append(comp, "-o", ""), &out, &bytes.Buffer{}); err != nil {
				t.Fatal(err)
			}
			if got := strings.Fields(out.String()); len(got) != 4 || strings.Join(got[:3], ",") != "table,json,yaml" {
				t.Errorf("completion of -o: %q", out.String())
			}
		})
	}
}

func TestVersionOutput(t *testing.T) {
	var table, js, ym bytes.Buffer
	for _, c := range []struct {
		args []string
		out  *bytes.Buffer
	}{{[]string{"version"}, &table}, {[]string{"version", "-o", "json"}, &js}, {[]string{"version", "-o", "yaml"}, &ym}} {
		if err := Run(context.Background(), c.args, c.out, c.out); err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
	}
	var fromJSON, fromYAML versionInfo
	if err := json.Unmarshal(js.Bytes(), &fromJSON); err != nil {
		t.Fatalf("version -o json: %v: %s", err, js.String())
	}
	if err := yaml.UnmarshalStrict(ym.Bytes(), &fromYAML); err != nil {
		t.Fatalf("version -o yaml: %v: %s", err, ym.String())
	}
	if fromJSON != fromYAML || fromJSON.GoVersion != runtime.Version() || fromJSON.Version != Version || fromJSON.Commit == "" || fromJSON.Platform != runtime.GOOS+"/"+runtime.GOARCH {
		t.Errorf("json %+v, yaml %+v", fromJSON, fromYAML)
	}
	if want := "wasme " + Version + " (commit " + fromJSON.Commit + ", " + runtime.Version(); !strings.HasPrefix(table.String(), want) || strings.Count(table.String(), "\n") != 1 {
		t.Errorf("version table %q, want one line starting %q", table.String(), want)
	}
}

// Every size flag of every verb is a Kubernetes quantity (a string whose default parses as
// one) and every time flag a Go duration, so no verb takes bytes, MiB or seconds as numbers.
func TestSizesAndDurationsConvention(t *testing.T) {
	isSize := func(name string) bool {
		return strings.Contains(name, "size") || strings.Contains(name, "memory")
	}
	isTime := func(name string) bool {
		for _, w := range []string{"timeout", "interval", "period", "delay", "wait", "grace"} {
			if strings.Contains(name, w) {
				return true
			}
		}
		return false
	}
	var sizes, times int
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			walk(sub)
		}
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			switch {
			case isSize(f.Name):
				sizes++
				if _, err := resource.ParseQuantity(f.DefValue); f.Value.Type() != "string" || err != nil {
					t.Errorf("%s --%s: type %s, default %q; want a quantity", c.CommandPath(), f.Name, f.Value.Type(), f.DefValue)
				}
			case isTime(f.Name):
				times++
				if f.Value.Type() != "duration" {
					t.Errorf("%s --%s: type %s, want a duration", c.CommandPath(), f.Name, f.Value.Type())
				}
			}
		})
	}
	walk(NewRootCmd(streams{}))
	// The walk saw the flags it is about (operator, cache, push, pull, run).
	if sizes < 8 || times < 6 {
		t.Errorf("found %d size and %d time flags; the walk missed some", sizes, times)
	}
}
