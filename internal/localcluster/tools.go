package localcluster

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"

	"wasme.io/wasme/internal/testenv"
	"wasme.io/wasme/internal/testing/tools"
)

// EnsureTools makes sure etcd, kube-apiserver, istiod and the registry are built, building
// those the environment does not name (tools.AssetsEnv, IstiodEnv, RegistryEnv), and sets
// those variables for this process.
func EnsureTools(progress io.Writer) error {
	for _, f := range []func(io.Writer) (string, error){tools.Assets, tools.Istiod, tools.Registry} {
		if _, err := f(progress); err != nil {
			return err
		}
	}
	return nil
}

// IstioVersion is the version of the pinned istio.io/istio module, which is what the istiod
// we run is.
func IstioVersion() (string, error) { return tools.IstioVersion() }

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
