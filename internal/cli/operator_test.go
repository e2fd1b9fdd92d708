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
