package localcluster

import (
	"io"

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
