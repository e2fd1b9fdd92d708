package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"wasme.io/wasme/internal/wasmhost"
	"wasme.io/wasme/pkg/wasmimage"
)

func newPushCmd(s streams) *cobra.Command {
	var (
		reg    registryFlags
		store  storeFlag
		out    outputFlag
		layout string
		prog   progressFlag
	)
	cmd := &cobra.Command{
		Use:   "push NAME:TAG",
		Short: "Push an image from the local store to its registry",
		Long: `Push an image from the local store to the registry its name says.

The default layout is wasme's OCI variant (a runtime-config blob and the raw module, exactly two
layers), which Istio, Envoy Gateway and Higress read. Registries that refuse custom media types
take --layout compat (OCI tar+gzip with plugin.wasm) or compat-docker; --layout cncf writes the
CNCF Wasm artifact.`,
		Example: `  wasme push registry.example.com/team/my-filter:v1
  wasme push registry.example.com/team/my-filter:v1 --layout compat -u me --password-stdin`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := wasmimage.ParseLayout(layout)
			if err != nil {
				return err
			}
			ref, err := parseRef(args[0])
			if err != nil {
				return err
			}
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
			e, module, err := st.Get(ref)
			if err != nil {
				return err
			}
			// Refuse here what Envoy would refuse at load time, before it is in a registry.
			if _, err := wasmhost.CheckModule(cmd.Context(), module); err != nil {
				return fmt.Errorf("push %s: %w", ref.Familiar(), err)
			}
			opts = append(opts, prog.option(cmd, s.errOut, "pushing")...)
			res, err := wasmimage.Push(cmd.Context(), ref.String(), module, e.Config, append(opts, wasmimage.WithLayout(l))...)
			if err != nil {
				return err
			}
			if err := st.SetManifestDigest(ref, res.ManifestDigest); err != nil {
				return err
			}
			info := infoOf(e)
			info.ManifestDigest, info.Layout = res.ManifestDigest.String(), string(res.Layout)
			return out.print(s.out, info, func() error {
				_, err := fmt.Fprintf(s.out, "Pushed %s (layout %s)\nDigest: %s\nModule: %s\n", ref.Familiar(), res.Layout, res.ManifestDigest, res.ModuleDigest)
				return err
			})
		},
	}
	reg.bind(cmd)
	store.bind(cmd)
	out.bind(cmd)
	prog.bind(cmd)
	cmd.Flags().StringVar(&layout, "layout", "wasme", "image layout: wasme, compat, compat-docker or cncf")
	return cmd
}
