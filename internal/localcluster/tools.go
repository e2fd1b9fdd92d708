package localcluster

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"wasme.io/wasme/internal/testenv"
)

// Environment variables that point the harness at prebuilt tools; the Makefile sets them so
// that `go test` never builds a tool inside a test's timeout.
const (
	// IstiodEnv names the pilot-discovery binary (hack/tools/build.sh istiod).
	IstiodEnv = "WASME_ISTIOD"
	// AssetsEnv is envtest's directory holding etcd and kube-apiserver.
	AssetsEnv = "KUBEBUILDER_ASSETS"
)

// buildTool runs hack/tools/build.sh with args and returns the path it prints. Its progress
// (">> building istiod ...") goes to progress, so a first run on a fresh machine shows why it
// takes minutes.
func buildTool(progress io.Writer, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(testenv.RepoRoot(), "hack", "tools", "build.sh"), args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = progress
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("hack/tools/build.sh %s: %w", strings.Join(args, " "), err)
	}
	p := strings.TrimSpace(out.String())
	if p == "" {
		return "", fmt.Errorf("hack/tools/build.sh %s printed nothing", strings.Join(args, " "))
	}
	return p, nil
}

// EnsureTools makes sure etcd, kube-apiserver and istiod are built, building them if the
// environment does not name them, and sets AssetsEnv and IstiodEnv for this process.
func EnsureTools(progress io.Writer) error {
	if os.Getenv(AssetsEnv) == "" {
		dir, err := buildTool(progress, "--assets")
		if err != nil {
			return err
		}
		if err := os.Setenv(AssetsEnv, dir); err != nil {
			return err
		}
	}
	if os.Getenv(IstiodEnv) == "" {
		bin, err := buildTool(progress, "istiod")
		if err != nil {
			return err
		}
		if err := os.Setenv(IstiodEnv, bin); err != nil {
			return err
		}
	}
	return nil
}

// IstioVersion is the version of the pinned istio.io/istio module (its VERSION file, e.g.
// "1.31"), which is what the istiod we run is.
func IstioVersion() (string, error) {
	root, err := buildTool(io.Discard, "--istio-dir")
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(filepath.Join(root, "VERSION"))
	if err != nil {
		return "", fmt.Errorf("reading the istio module's VERSION: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// BuildExampleFilter builds examples/filters/<name> with the Go toolchain for wasip1, as
// `wasme build go` does, and returns the .wasm bytes.
func BuildExampleFilter(name string) ([]byte, error) {
	src := filepath.Join(testenv.RepoRoot(), "examples", "filters", name)
	tmp, err := os.MkdirTemp("", "wasme-filter-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, name+".wasm")
	cmd := exec.Command("go", "build", "-buildmode=c-shared", "-o", out, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building %s: %w\n%s", src, err, b)
	}
	return os.ReadFile(out)
}
