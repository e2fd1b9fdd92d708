package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Version is the release version, set at link time with -ldflags "-X wasme.io/wasme/internal/cli.Version=v1.2.3".
var Version = "dev"

// Commit is the source commit, set at link time by `make build` (-X ...cli.Commit=<sha>); when
// empty, the commit Go stamped into the binary, if any.
var Commit = ""

func newVersionCmd(s streams) *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print the wasme version",
		Example: "  wasme version",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			commit := Commit
			if info, ok := debug.ReadBuildInfo(); ok {
				for _, kv := range info.Settings {
					if kv.Key == "vcs.revision" && commit == "" {
						commit = kv.Value
					}
				}
			}
			if commit == "" {
				commit = "unknown"
			}
			_, err := fmt.Fprintf(s.out, "wasme %s (commit %s, %s, %s/%s)\n", Version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return err
		},
	}
}
