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

// versionInfo is what `wasme version -o json|yaml` prints.
type versionInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

func currentVersion() versionInfo {
	commit := Commit
	if info, ok := debug.ReadBuildInfo(); ok && commit == "" {
		for _, kv := range info.Settings {
			if kv.Key == "vcs.revision" {
				commit = kv.Value
			}
		}
	}
	if commit == "" {
		commit = "unknown"
	}
	return versionInfo{Version: Version, Commit: commit, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
}

func newVersionCmd(s streams) *cobra.Command {
	var out outputFlag
	cmd := &cobra.Command{
		Use:     "version",
		Short:   "Print the wasme version",
		Example: "  wasme version\n  wasme version -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := currentVersion()
			return out.print(s.out, v, func() error {
				_, err := fmt.Fprintf(s.out, "wasme %s (commit %s, %s, %s)\n", v.Version, v.Commit, v.GoVersion, v.Platform)
				return err
			})
		},
	}
	out.bind(cmd)
	return cmd
}
