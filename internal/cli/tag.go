package cli

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newTagCmd(s streams) *cobra.Command {
	var (
		store storeFlag
		out   outputFlag
	)
	cmd := &cobra.Command{
		Use:     "tag SOURCE[:TAG] TARGET[:TAG]",
		Short:   "Give an image of the local store another name",
		Example: "  wasme tag my-filter:v1 registry.example.com/team/my-filter:v1",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, err := parseRef(args[0])
			if err != nil {
				return err
			}
			dst, err := parseRef(args[1])
			if err != nil {
				return err
			}
			if dst.Digest != "" {
				return fmt.Errorf("tag %s: the target needs a tag, not a digest", args[1])
			}
			st, err := store.open()
			if err != nil {
				return err
			}
			e, err := st.Tag(src, dst)
			if err != nil {
				return err
			}
			return out.print(s.out, infoOf(e), func() error {
				_, err := fmt.Fprintf(s.out, "Tagged %s as %s\nModule: %s\n", src.Familiar(), dst.Familiar(), e.ModuleDigest)
				return err
			})
		},
	}
	store.bind(cmd)
	out.bind(cmd)
	return cmd
}
