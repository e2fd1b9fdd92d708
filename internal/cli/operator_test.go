package cli

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

func TestOperatorCommandRefusesBadFlags(t *testing.T) {
	cases := map[string]struct {
		args []string
		want string
	}{
		"log level":          {[]string{"--log-level", "loud"}, "--log-level"},
		"missing kubeconfig": {[]string{"--kubeconfig", filepath.Join(t.TempDir(), "nope")}, "reading kubeconfig"},
		"positional":         {[]string{"extra"}, "unknown command"},
		"registry pattern":   {[]string{"--allowed-registries", "registry.example.com:99999"}, "--allowed-registries"},
		"cluster CIDR":       {[]string{"--cluster-cidrs", "10.0.0.0"}, "--cluster-cidrs"},
		"relative cache dir": {[]string{"--cache-directory", "wasme-cache"}, `--cache-directory "wasme-cache": must be an absolute path`},
		"unclean cache dir":  {[]string{"--cache-directory", "/srv/../wasme/"}, `--cache-directory "/srv/../wasme/": must be a clean path`},
		"root as cache dir":  {[]string{"--cache-directory", "/"}, `--cache-directory "/": must be a clean path`},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			root := NewRootCmd(streams{out: &out, errOut: &errOut})
			root.SetArgs(append([]string{"operator"}, tc.args...))
			err := root.Execute()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}
