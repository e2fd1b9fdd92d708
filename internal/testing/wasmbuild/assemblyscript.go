package wasmbuild

import (
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"wasme.io/wasme/internal/filterbuild"
	"wasme.io/wasme/internal/testing/tools"
)

// NPMCacheEnv points npm's download cache somewhere else than NPMCacheDir's default.
const NPMCacheEnv = "WASME_NPM_CACHE"

// NPMCacheDir is the npm cache the tests use, outside the work tree beside the pinned tools
// ($WASME_NPM_CACHE, else $WASME_TOOLS_CACHE/npm, else ~/.cache/wasme-tools/npm), so a warm
// run installs the AssemblyScript compiler without the network.
func NPMCacheDir() string {
	if d := os.Getenv(NPMCacheEnv); d != "" {
		return d
	}
	if d := os.Getenv("WASME_TOOLS_CACHE"); d != "" {
		return filepath.Join(d, "npm")
	}
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, _ := os.UserHomeDir()
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "wasme-tools", "npm")
}

// AssemblyScriptExample is the directory of the seed's add-header filter written with the
// original wasme's AssemblyScript SDK (@solo-io/proxy-runtime).
func AssemblyScriptExample() string {
	return filepath.Join(tools.RepoRoot(), "examples", "assemblyscript", "custom-header")
}

var asBuild struct {
	once sync.Once
	wasm []byte
	err  error
}

// AssemblyScript builds AssemblyScriptExample as wasme build assemblyscript does (npm ci, npm
// run asbuild:optimized), in a copy, once per process. npm missing is an error that says
// what to install.
func AssemblyScript() ([]byte, error) {
	asBuild.once.Do(func() {
		tmp, err := os.MkdirTemp("", "wasmbuild-as-")
		if err != nil {
			asBuild.err = err
			return
		}
		defer os.RemoveAll(tmp)
		dir := filepath.Join(tmp, "custom-header")
		if err := CopyProject(AssemblyScriptExample(), dir); err != nil {
			asBuild.err = err
			return
		}
		dst := filepath.Join(tmp, "filter.wasm")
		if err := filterbuild.AssemblyScript(context.Background(), dir, dst, io.Discard, "npm_config_cache="+NPMCacheDir()); err != nil {
			asBuild.err = err
			return
		}
		asBuild.wasm, asBuild.err = os.ReadFile(dst)
	})
	return asBuild.wasm, asBuild.err
}

// AssemblyScriptT is AssemblyScript failing the test on error.
func AssemblyScriptT(tb testing.TB) []byte {
	tb.Helper()
	b, err := AssemblyScript()
	if err != nil {
		tb.Fatalf("building the AssemblyScript example: %v", err)
	}
	return b
}

// CopyProject copies a filter project without its node_modules and build outputs.
func CopyProject(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() && (rel == "node_modules" || rel == "build" || strings.HasPrefix(rel, "node_modules"+string(filepath.Separator))) {
			return filepath.SkipDir
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
}
