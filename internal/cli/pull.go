package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"wasme.io/wasme/pkg/wasmimage"
)

func newPullCmd(s streams) *cobra.Command {
	var (
		reg   registryFlags
		store storeFlag
		out   outputFlag
		prog  progressFlag
	)
	cmd := &cobra.Command{
		Use:   "pull NAME[:TAG|@DIGEST]",
		Short: "Pull an image into the local store",
		Long: `Pull a Wasm filter image in any layout in use (wasme, compat, wasm-to-oci, CNCF, a single raw
layer, an image index) into the local store. The module is checked before it is stored: its
digest, size limit, and a full compile with the proxy-wasm ABI export.`,
		Example: `  wasme pull registry.example.com/team/my-filter:v1
  wasme pull registry.example.com/team/my-filter@sha256:4f6c... -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := reg.readPassword(cmd.InOrStdin()); err != nil {
				return err
			}
			opts, err := reg.options()
			if err != nil {
				return err
			}
			st, err := store.open()
			if err != nil {
				return err
			}
			img, err := wasmimage.Pull(cmd.Context(), args[0], append(opts, prog.option(cmd, s.errOut, "pulling")...)...)
			if err != nil {
				return err
			}
			if _, err := wasmimage.ValidateModule(cmd.Context(), img.Module); err != nil {
				return fmt.Errorf("pull %s: %w", img.Ref, err)
			}
			e, err := st.Put(img.Ref, img.Module, img.Config, img.ManifestDigest)
			if err != nil {
				return err
			}
			info := infoOf(e)
			info.Layout = string(img.Layout)
			return out.print(s.out, info, func() error {
				_, err := fmt.Fprintf(s.out, "Pulled %s (layout %s)\nDigest: %s\nModule: %s\n", img.Ref.Familiar(), img.Layout, img.ManifestDigest, img.ModuleDigest)
				return err
			})
		},
	}
	reg.bind(cmd)
	store.bind(cmd)
	out.bind(cmd)
	prog.bind(cmd)
	return cmd
}
