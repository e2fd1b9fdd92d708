package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"wasme.io/wasme/internal/cacheprotocol"
)

func TestCacheCommandRefusesBadFlags(t *testing.T) {
	ca := writeCA(t)
	cases := map[string]struct {
		args []string
		want string
	}{
		"no node name":         {[]string{"--node-name", ""}, "--node-name is required"},
		"empty directory":      {[]string{"--node-name", "n", "--directory", ""}, "--directory must not be empty"},
		"port zero":            {[]string{"--node-name", "n", "--port", "0"}, "--port 0"},
		"port too big":         {[]string{"--node-name", "n", "--port", "70000"}, "--port 70000"},
		"negative grace":       {[]string{"--node-name", "n", "--grace-period", "-1s"}, "--grace-period"},
		"bad size":             {[]string{"--node-name", "n", "--max-size", "lots"}, `--max-size "lots"`},
		"negative size":        {[]string{"--node-name", "n", "--max-size", "-1Gi"}, "must not be negative"},
		"zero module size":     {[]string{"--node-name", "n", "--max-module-size", "0"}, "--max-module-size must be more than 0"},
		"operator URL scheme":  {[]string{"--node-name", "n", "--operator-url", "ftp://operator"}, "--operator-url"},
		"operator URL query":   {[]string{"--node-name", "n", "--operator-url", "https://operator:9980/?x=1"}, "query"},
		"plain HTTP operator":  {[]string{"--node-name", "n", "--operator-url", "http://operator:9980"}, "want https://host:port"},
		"missing CA file":      {[]string{"--node-name", "n", "--ca-file", filepath.Join(t.TempDir(), "nope")}, "reading the module server's CA"},
		"CA file without PEM":  {[]string{"--node-name", "n", "--ca-file", writeFile(t, "not a certificate")}, "holds no PEM certificate"},
		"invalid node name":    {[]string{"--node-name", "Node_A", "--ca-file", ca, "--kubeconfig", writeKubeconfig(t)}, "not a valid object name"},
		"log level":            {[]string{"--node-name", "n", "--ca-file", ca, "--log-level", "loud"}, "--log-level"},
		"missing kubeconfig":   {[]string{"--node-name", "n", "--ca-file", ca, "--kubeconfig", filepath.Join(t.TempDir(), "nope")}, "reading kubeconfig"},
		"positional arguments": {[]string{"--node-name", "n", "registry.example.com/filters/x:v1"}, "unknown command"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			root := NewRootCmd(streams{out: &out, errOut: &errOut})
			root.SetArgs(append([]string{"cache"}, tc.args...))
			err := root.Execute()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// writeCA writes a module server CA as the operator makes one.
func writeCA(t *testing.T) string {
	t.Helper()
	data, err := cacheprotocol.NewServingSecretData(cacheprotocol.ServiceDNSNames("wasme"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, string(data[cacheprotocol.CAKey]))
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// writeKubeconfig writes a syntactically valid kubeconfig; the commands under test fail
// before they would connect to it.
func writeKubeconfig(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	const cfg = `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestPrepareDirectory is the DaemonSet's init step: the directory is created with mode 0755
// and handed to the given owner (here the test's own user, which needs no CAP_CHOWN); bad
// owners and a file in the directory's place are refused in one line.
func TestPrepareDirectory(t *testing.T) {
	root := t.TempDir()
	uid, gid := os.Getuid(), os.Getgid()
	owner := strconv.Itoa(uid) + ":" + strconv.Itoa(gid)
	dir := filepath.Join(root, "a", "cache")
	var out bytes.Buffer
	if err := prepareDirectory(dir, owner, &out); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if st.Mode().Perm() != 0o755 || int(sys.Uid) != uid || int(sys.Gid) != gid {
		t.Fatalf("%s: mode %o owner %d:%d, want 755 %s", dir, st.Mode().Perm(), sys.Uid, sys.Gid, owner)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := prepareDirectory(dir, owner, &out); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o755 {
		t.Fatalf("mode %o after a second run, want 755", st.Mode().Perm())
	}
	file := filepath.Join(root, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct{ dir, owner, want string }{
		"no gid":       {dir, "65532", "want UID:GID"},
		"negative":     {dir, "-1:0", "want UID:GID"},
		"not a number": {dir, "nonroot:nonroot", "want UID:GID"},
		"a file":       {file, owner, "not a directory"},
	} {
		err := prepareDirectory(c.dir, c.owner, &out)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: err = %v, want one line with %q", name, err, c.want)
		}
	}
}
