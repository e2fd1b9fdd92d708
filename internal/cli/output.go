package cli

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

// The one output convention: every verb that prints objects takes -o with these values and
// this help text (TestOutputConvention walks the tree), table being for people.
const (
	outputUsage      = "output format: table, json or yaml"
	outputAnnotation = "wasme.io/output"
)

var outputFormats = []string{"table", "json", "yaml"}

// outputFlag is -o for commands whose output is data. It is a pflag.Value, so a bad format is
// refused while the flags are parsed, before the command does anything.
type outputFlag struct{ format string }

func (f *outputFlag) String() string {
	if f.format == "" {
		return "table"
	}
	return f.format
}

func (f *outputFlag) Set(v string) error {
	for _, ok := range outputFormats {
		if v == ok {
			f.format = v
			return nil
		}
	}
	return fmt.Errorf("want table, json or yaml")
}

func (f *outputFlag) Type() string { return "format" }

func (f *outputFlag) bind(cmd *cobra.Command) {
	cmd.Flags().VarP(f, "output", "o", outputUsage)
	_ = cmd.RegisterFlagCompletionFunc("output", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return outputFormats, cobra.ShellCompDirectiveNoFileComp
	})
	if cmd.Annotations == nil {
		cmd.Annotations = map[string]string{}
	}
	cmd.Annotations[outputAnnotation] = "true"
}

// data reports whether the output is for programs: then a command prints only the object on
// stdout, no progress lines.
func (f *outputFlag) data() bool { return f.String() != "table" }

// print writes v as JSON or YAML when asked, else calls table.
func (f *outputFlag) print(w io.Writer, v any, table func() error) error {
	switch f.String() {
	case "json":
		b, err := jsonIndent(v)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	return table()
}

func jsonIndent(v any) ([]byte, error) { return json.MarshalIndent(v, "", "  ") }
