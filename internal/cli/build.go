package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"wasme.io/wasme/internal/filterbuild"
	"wasme.io/wasme/internal/wasmhost"
	"wasme.io/wasme/pkg/wasmimage"
)

// buildFlags are shared by every `wasme build` language.
type buildFlags struct {
	tag         string
	rootIDs     []string
	abiVersions []string
	configFile  string
	store       storeFlag
	out         outputFlag
}

func (f *buildFlags) bind(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVarP(&f.tag, "tag", "t", "", "image reference to store the filter under, name:tag (required)")
	fl.StringSliceVar(&f.rootIDs, "root-id", nil, "root id(s) the filter registers; the first is the default")
	fl.StringSliceVar(&f.abiVersions, "abi-version", nil, "proxy-wasm ABI version(s) (default: the one the module exports)")
	fl.StringVarP(&f.configFile, "config", "c", "", "runtime-config.json to use (flags override its fields)")
	f.store.bind(cmd)
	f.out.bind(cmd)
	_ = cmd.MarkFlagRequired("tag")
}

// buildSource compiles a source directory into dst, the .wasm file.
type buildSource func(ctx context.Context, dir, dst string, stderr io.Writer) error

func newBuildCmd(s streams) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build a Wasm filter image into the local store",
		Long: `Build a proxy-wasm filter and store it as an image in the local store, ready for wasme push.
No container runtime is needed: the language's own toolchain on PATH is used.`,
		Example: `  wasme build go ./my-filter -t registry.example.com/team/my-filter:v1 --root-id my_root
  wasme build precompiled filter.wasm -t registry.example.com/team/my-filter:v1 -c runtime-config.json`,
	}
	cmd.AddCommand(
		newBuildLangCmd(s, "assemblyscript", "Build an AssemblyScript filter with npm (npm ci, npm run asbuild:optimized; the original wasme's projects)", buildAssemblyScript),
		newBuildLangCmd(s, "go", "Build a Go filter with the standard toolchain (GOOS=wasip1 GOARCH=wasm, -buildmode=c-shared)", buildGo),
		newBuildLangCmd(s, "tinygo", "Build a Go filter with TinyGo (-target=wasip1 -buildmode=c-shared)", buildTinyGo),
		newBuildLangCmd(s, "rust", "Build a Rust filter with cargo (--target wasm32-wasip1 --release)", buildRust),
		newBuildPrecompiledCmd(s),
	)
	return cmd
}

func newBuildLangCmd(s streams, lang, short string, build buildSource) *cobra.Command {
	var f buildFlags
	cmd := &cobra.Command{
		Use:     lang + " DIR -t NAME:TAG",
		Short:   short,
		Example: fmt.Sprintf("  wasme build %s ./my-filter -t registry.example.com/team/my-filter:v1 --root-id my_root", lang),
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := args[0]
			if st, err := os.Stat(dir); err != nil || !st.IsDir() {
				return fmt.Errorf("build %s: %s is not a directory", lang, dir)
			}
			tmp, err := os.MkdirTemp("", "wasme-build-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(tmp)
			dst := filepath.Join(tmp, "filter.wasm")
			// A project's own runtime-config.json (the original's templates have one) is used
			// unless -c names another.
			if f.configFile == "" {
				if rc := filepath.Join(dir, "runtime-config.json"); fileExists(rc) {
					f.configFile = rc
				}
			}
			if err := build(cmd.Context(), dir, dst, s.errOut); err != nil {
				return err
			}
			module, err := os.ReadFile(dst)
			if err != nil {
				return fmt.Errorf("build %s: the toolchain wrote no module: %w", lang, err)
			}
			return storeBuilt(cmd.Context(), s, &f, module)
		},
	}
	f.bind(cmd)
	return cmd
}

func newBuildPrecompiledCmd(s streams) *cobra.Command {
	var f buildFlags
	cmd := &cobra.Command{
		Use:     "precompiled FILE.wasm -t NAME:TAG",
		Short:   "Store an already compiled .wasm filter as an image",
		Example: "  wasme build precompiled filter.wasm -t registry.example.com/team/my-filter:v1 --root-id my_root",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			module, err := os.ReadFile(args[0])
			if err != nil {
				return fmt.Errorf("build precompiled: %w", err)
			}
			return storeBuilt(cmd.Context(), s, &f, module)
		},
	}
	f.bind(cmd)
	return cmd
}

func storeBuilt(ctx context.Context, s streams, f *buildFlags, module []byte) error {
	ref, err := parseRef(f.tag)
	if err != nil {
		return err
	}
	if ref.Digest != "" {
		return fmt.Errorf("-t %s: give a tag, not a digest", f.tag)
	}
	if err := wasmimage.CheckHeader(module); err != nil {
		return fmt.Errorf("build: %w", err)
	}
	mi, err := wasmhost.CheckModule(ctx, module)
	if err != nil {
		return fmt.Errorf("build: %w", err)
	}
	for _, w := range mi.Warnings {
		fmt.Fprintf(s.errOut, "warning: %s\n", w)
	}
	abi := "v" + mi.ABI
	var cfg wasmimage.RuntimeConfig
	if f.configFile != "" {
		b, err := os.ReadFile(f.configFile)
		if err != nil {
			return fmt.Errorf("runtime config: %w", err)
		}
		if cfg, err = wasmimage.ParseRuntimeConfig(b); err != nil {
			return fmt.Errorf("%s: %w", f.configFile, err)
		}
	}
	if len(f.rootIDs) > 0 {
		cfg.RootIDs = f.rootIDs
	}
	if len(f.abiVersions) > 0 {
		cfg.AbiVersions = f.abiVersions
	}
	if len(cfg.AbiVersions) == 0 {
		cfg.AbiVersions = []string{abi}
	}
	if cfg.Type == "" {
		cfg.Type = wasmimage.DefaultRuntimeType
	}
	st, err := f.store.open()
	if err != nil {
		return err
	}
	e, err := st.Put(ref, module, cfg, "")
	if err != nil {
		return err
	}
	info := infoOf(e)
	return f.out.print(s.out, info, func() error {
		_, err := fmt.Fprintf(s.out, "Built %s\nModule: %s (%d bytes, ABI %s, root ids %s)\n", ref.Familiar(), e.ModuleDigest, e.Size, strings.Join(cfg.AbiVersions, ","), strings.Join(cfg.RootIDs, ","))
		return err
	})
}

func lookTool(lang, tool string) (string, error) {
	p, err := exec.LookPath(tool)
	if err != nil {
		return "", fmt.Errorf("build %s: %s is not on PATH (install it, or build the .wasm yourself and use wasme build precompiled)", lang, tool)
	}
	return p, nil
}

func runTool(ctx context.Context, lang, dir string, stderr io.Writer, env []string, name string, args ...string) error {
	bin, err := lookTool(lang, name)
	if err != nil {
		return err
	}
	c := exec.CommandContext(ctx, bin, args...)
	c.Dir = dir
	c.Env = append(os.Environ(), env...)
	c.Stdout, c.Stderr = stderr, stderr
	if err := c.Run(); err != nil {
		if errors.Is(ctx.Err(), context.Canceled) {
			return ctx.Err()
		}
		return fmt.Errorf("build %s: %s %s failed: %w", lang, name, strings.Join(args, " "), err)
	}
	return nil
}

func buildGo(ctx context.Context, dir, dst string, stderr io.Writer) error {
	return runTool(ctx, "go", dir, stderr, []string{"GOOS=wasip1", "GOARCH=wasm"}, "go", "build", "-buildmode=c-shared", "-trimpath", "-o", dst, ".")
}

func buildTinyGo(ctx context.Context, dir, dst string, stderr io.Writer) error {
	return runTool(ctx, "tinygo", dir, stderr, nil, "tinygo", "build", "-target=wasip1", "-buildmode=c-shared", "-scheduler=none", "-o", dst, ".")
}

func buildRust(ctx context.Context, dir, dst string, stderr io.Writer) error {
	if err := runTool(ctx, "rust", dir, stderr, nil, "cargo", "build", "--release", "--target", "wasm32-wasip1"); err != nil {
		return err
	}
	found, _ := filepath.Glob(filepath.Join(dir, "target", "wasm32-wasip1", "release", "*.wasm"))
	if len(found) != 1 {
		return fmt.Errorf("build rust: want exactly one .wasm in target/wasm32-wasip1/release, found %d (is crate-type = [\"cdylib\"] set?)", len(found))
	}
	b, err := os.ReadFile(found[0])
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

func buildAssemblyScript(ctx context.Context, dir, dst string, stderr io.Writer) error {
	if err := filterbuild.AssemblyScript(ctx, dir, dst, stderr); err != nil {
		return fmt.Errorf("build assemblyscript: %w", err)
	}
	return nil
}
