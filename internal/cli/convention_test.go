package cli

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
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
