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
	"strings"
	"syscall"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
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
		// controller-runtime's clients log through a global logger that, never set, prints a
		// stack trace after 30 s; the daemons set theirs (with --log-level/--log-format), the
		// other commands report through their errors.
		PersistentPreRun: func(cmd *cobra.Command, _ []string) {
			if n := cmd.Name(); n != "operator" && n != "cache" {
				ctrllog.SetLogger(logr.Discard())
			}
		},
	}
	root.SetOut(s.out)
	root.SetErr(s.errOut)
	root.AddCommand(newVersionCmd(s))
	root.AddCommand(newBuildCmd(s), newPushCmd(s), newPullCmd(s), newTagCmd(s), newListCmd(s), newLoginCmd(s), newInitCmd(s))
	root.AddCommand(newKeygenCmd(s), newSignCmd(s), newVerifyCmd(s))
	root.AddCommand(newOperatorCmd(s))
	root.AddCommand(newCacheCmd(s))
	root.AddCommand(newDeployCmd(s))
	root.AddCommand(newStatusCmd(s))
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
		fmt.Fprintln(s.errOut, "Error:", oneLine(err.Error()))
		if errors.Is(err, context.Canceled) {
			return 130
		}
		return 1
	}
	return 0
}

// oneLine joins a multi-line error (a tool's output, a wrapped log tail) into one line, so
// every failure is one line on stderr.
func oneLine(msg string) string {
	var parts []string
	for _, l := range strings.Split(msg, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
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
