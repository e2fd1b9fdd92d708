package cli

import (
	"os"

	"github.com/spf13/cobra"

	"wasme.io/wasme/internal/validation"
)

// newValidateModuleCmd is the hidden verb the operator runs its validations in: one module
// per process, request and module on stdin, verdict on stdout (internal/validation).
func newValidateModuleCmd() *cobra.Command {
	return &cobra.Command{
		Use:    validation.Verb,
		Short:  "Validate one module in a limited child process (used by the operator)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if code := validation.Child(os.Stdin, os.Stdout); code != 0 {
				os.Exit(code)
			}
			return nil
		},
	}
}
