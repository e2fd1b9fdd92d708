package cli

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"wasme.io/wasme/pkg/wasmimage"
)

func newListCmd(s streams) *cobra.Command {
	var (
		store storeFlag
		out   outputFlag
		wide  bool
	)
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the images in the local store",
		Example: "  wasme list\n  wasme list -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := store.open()
			if err != nil {
				return err
			}
			entries, err := st.List()
			if err != nil {
				return err
			}
			infos := make([]imageInfo, 0, len(entries))
			for i := range entries {
				infos = append(infos, infoOf(&entries[i]))
			}
			return out.print(s.out, infos, func() error {
				tw := tabwriter.NewWriter(s.out, 0, 4, 2, ' ', 0)
				header := "NAME\tTAG\tSIZE\tSHA\tUPDATED"
				if wide {
					header += "\tMODULE DIGEST\tROOT IDS"
				}
				fmt.Fprintln(tw, header)
				for _, e := range entries {
					ref, err := wasmimage.ParseReference(e.Ref)
					if err != nil {
						continue
					}
					name := wasmimage.Reference{Registry: ref.Registry, Repository: ref.Repository}.Familiar()
					tag := ref.Tag
					if tag == "" {
						tag = "<none>"
					}
					line := fmt.Sprintf("%s\t%s\t%s\t%s\t%s", name, tag, humanSize(e.Size), e.ModuleDigest.Encoded()[:8], e.Updated.Local().Format(time.DateTime))
					if wide {
						line += fmt.Sprintf("\t%s\t%v", e.ModuleDigest, e.Config.RootIDs)
					}
					fmt.Fprintln(tw, line)
				}
				return tw.Flush()
			})
		},
	}
	store.bind(cmd)
	out.bind(cmd)
	cmd.Flags().BoolVarP(&wide, "wide", "w", false, "also show the full module digest and root ids")
	return cmd
}

func humanSize(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
