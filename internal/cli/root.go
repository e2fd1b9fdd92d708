// Package cli is the wasme command line: one file per verb, each command built by a
// constructor that takes its dependencies, with no package-level flag variables.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// streams are where a command reads and writes; tests replace them.
type streams struct {
	out    io.Writer
	errOut io.Writer
}

// NewRootCmd builds the wasme command tree.
func NewRootCmd(s streams) *cobra.Command {
	root := &cobra.Command{
		Use:           "wasme",
		Short:         "Build, ship and deploy WebAssembly filters for Envoy on Kubernetes",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(s.out)
	root.SetErr(s.errOut)
	root.AddCommand(newVersionCmd(s))
	root.AddCommand(newBuildCmd(s), newPushCmd(s), newPullCmd(s), newTagCmd(s), newListCmd(s), newLoginCmd(s), newInitCmd(s))
	root.AddCommand(newOperatorCmd(s))
	root.AddCommand(newCacheCmd(s))
	root.AddCommand(newDeployCmd(s))
	root.AddCommand(newUndeployCmd(s))
	root.AddCommand(newRunCmd(s))
	root.AddCommand(newValidateModuleCmd())
	return root
}

// Execute runs the CLI with the process's arguments and returns the exit code. Ctrl-C cancels
// the command's context.
func Execute() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return executeArgs(ctx, streams{out: os.Stdout, errOut: os.Stderr}, os.Stdin, os.Args[1:])
}

// executeArgs runs one command line and returns its exit code; tests call it as a user would.
func executeArgs(ctx context.Context, s streams, in io.Reader, args []string) int {
	if err := run(ctx, s, in, args); err != nil {
		fmt.Fprintln(s.errOut, "Error:", err)
		if errors.Is(err, context.Canceled) {
			return 130
		}
		return 1
	}
	return 0
}

// Run runs one command line with the given output streams and returns its error; for tests
// outside this package and for embedding.
func Run(ctx context.Context, args []string, out, errOut io.Writer) error {
	return run(ctx, streams{out: out, errOut: errOut}, nil, args)
}

func run(ctx context.Context, s streams, in io.Reader, args []string) error {
	root := NewRootCmd(s)
	if in != nil {
		root.SetIn(in)
	}
	root.SetArgs(args)
	return root.ExecuteContext(ctx)
}
