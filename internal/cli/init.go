package cli

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/spf13/cobra"
)

// initGo is the Go project wasme init writes: the custom-header example with its ABI glue,
// copied from examples/filters (a test keeps the copy in step). Files end in .txt so that
// the main module does not compile them for the host.
//
//go:embed initdata/go
var initGo embed.FS

// initAssemblyScript is the original wasme's AssemblyScript template (its default language):
// the seed's add-header filter on @solo-io/proxy-runtime 0.1.1 and assemblyscript 0.9.1, pinned
// by package-lock.json, copied from examples/assemblyscript/custom-header (a test keeps the
// copy in step).
//
//go:embed all:initdata/assemblyscript
var initAssemblyScript embed.FS

var moduleNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._/-]*$`)

func newInitCmd(s streams) *cobra.Command {
	var (
		language string
		module   string
		rootID   string
	)
	cmd := &cobra.Command{
		Use:   "init DIR --language go",
		Short: "Create a filter project that wasme build builds as it is",
		Long: `Create a new proxy-wasm filter project in DIR (which must not exist or be empty). The Go
project is a working filter: it adds the response header "hello: world!", configurable with
{"name": "...", "value": "..."} as plugin configuration.`,
		Example: `  wasme init ./my-filter --language go
  wasme build go ./my-filter -t registry.example.com/team/my-filter:v1 --root-id add_header`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if language != "go" && language != "assemblyscript" {
				return fmt.Errorf("init: language %q is not supported (supported: go, assemblyscript)", language)
			}
			dir := args[0]
			if module == "" {
				module = strings.ToLower(filepath.Base(filepath.Clean(dir)))
			}
			if language == "go" && !moduleNameRE.MatchString(module) {
				return fmt.Errorf("init: %q is not a usable Go module path (use --module)", module)
			}
			if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
				return fmt.Errorf("init: %s exists and is not empty", dir)
			} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("init: %w", err)
			}
			// Write into a sibling temp dir and rename, so a failure leaves no half project.
			parent := filepath.Dir(filepath.Clean(dir))
			if err := os.MkdirAll(parent, 0o755); err != nil {
				return fmt.Errorf("init: %w", err)
			}
			tmp, err := os.MkdirTemp(parent, ".wasme-init-")
			if err != nil {
				return fmt.Errorf("init: %w", err)
			}
			defer os.RemoveAll(tmp)
			files := map[string]string{
				"go.mod":    fmt.Sprintf("module %s\n\ngo 1.24\n", module),
				"README.md": readme(module, rootID),
			}
			tree, root := fs.FS(initGo), "initdata/go"
			if language == "assemblyscript" {
				files = map[string]string{"README.md": readmeAS(filepath.Base(filepath.Clean(dir)), rootID)}
				tree, root = initAssemblyScript, "initdata/assemblyscript"
			}
			err = fs.WalkDir(tree, root, func(p string, d fs.DirEntry, err error) error {
				if err != nil || d.IsDir() {
					return err
				}
				b, err := fs.ReadFile(tree, p)
				if err != nil {
					return err
				}
				rel := strings.TrimSuffix(strings.TrimPrefix(p, root+"/"), ".txt")
				text := strings.ReplaceAll(string(b), "{{MODULE}}", module)
				if rootID != "add_header" {
					switch rel {
					case "main.go":
						text = strings.Replace(text, `RegisterRoot("add_header"`, fmt.Sprintf("RegisterRoot(%q", rootID), 1)
					case "assembly/index.ts", "runtime-config.json":
						text = strings.Replace(text, `"add_header"`, fmt.Sprintf("%q", rootID), 1)
					}
				}
				files[rel] = text
				return nil
			})
			if err != nil {
				return err
			}
			for rel, text := range files {
				p := filepath.Join(tmp, rel)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					return err
				}
				if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
					return err
				}
			}
			_ = os.Remove(dir) // an empty existing dir; rename needs the name free
			if err := os.Rename(tmp, dir); err != nil {
				return fmt.Errorf("init: %w", err)
			}
			if language == "assemblyscript" {
				_, err = fmt.Fprintf(s.out, "Created an AssemblyScript filter (root id %s) in %s\nBuild it: wasme build assemblyscript %s -t NAME:TAG\n", rootID, dir, dir)
				return err
			}
			_, err = fmt.Fprintf(s.out, "Created a Go filter (root id %s) in %s\nBuild it: wasme build go %s -t NAME:TAG --root-id %s\n", rootID, dir, dir, rootID)
			return err
		},
	}
	cmd.Flags().StringVarP(&language, "language", "l", "go", "language of the project: go, or assemblyscript (the original wasme's default)")
	cmd.Flags().StringVar(&module, "module", "", "Go module path (default: the directory name)")
	cmd.Flags().StringVar(&rootID, "root-id", "add_header", "root id the filter registers")
	return cmd
}

func readme(module, rootID string) string {
	return fmt.Sprintf(`# %s

A proxy-wasm HTTP filter in Go for GOOS=wasip1, created by wasme init. It adds the response
header "hello: world!"; the plugin configuration {"name": "x-a", "value": "b"} picks another.

    wasme build go . -t registry.example.com/team/%s:v1 --root-id %s
    wasme push registry.example.com/team/%s:v1

internal/proxywasm is a small ABI glue (proxy-wasm ABI v0.2.1); replace it with a full SDK as
the filter grows.
`, module, filepath.Base(module), rootID, filepath.Base(module))
}

func readmeAS(name, rootID string) string {
	return fmt.Sprintf(`# %s

A proxy-wasm HTTP filter in AssemblyScript on @solo-io/proxy-runtime (the original wasme's
SDK), created by wasme init. It adds the response header "hello: world!"; a plugin
configuration string replaces the value.

    wasme build assemblyscript . -t registry.example.com/team/%s:v1
    wasme push registry.example.com/team/%s:v1

wasme build assemblyscript runs npm ci and npm run asbuild:optimized (root id %s, from
runtime-config.json); npm must be on PATH.
`, name, name, name, rootID)
}
