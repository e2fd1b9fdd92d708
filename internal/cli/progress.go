package cli

import (
	"fmt"
	"io"
	"os"
	"sync"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"wasme.io/wasme/pkg/wasmimage"
)

// progressFlag is --progress of push and pull: transfer progress on stderr, by default only
// when stderr is a terminal, so scripts and tests read nothing but the result and errors.
type progressFlag struct{ on bool }

func (f *progressFlag) bind(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&f.on, "progress", false, "print the module's transfer progress on stderr, one line per tenth (default: when stderr is a terminal)")
}

// option is the wasmimage option that prints progress lines to w, or nil when quiet.
func (f *progressFlag) option(cmd *cobra.Command, w io.Writer, verb string) []wasmimage.Option {
	on := f.on
	if !cmd.Flags().Changed("progress") {
		file, ok := w.(*os.File)
		on = ok && term.IsTerminal(int(file.Fd()))
	}
	if !on {
		return nil
	}
	p := &progressPrinter{w: w, verb: verb, last: map[string]int64{}}
	return []wasmimage.Option{wasmimage.WithProgress(p.report)}
}

// progressPrinter writes a line each time a layer crosses a tenth of its size, and one at the
// end: lines, not carriage returns, so a log or a CI console shows them as they are.
type progressPrinter struct {
	w    io.Writer
	verb string
	mu   sync.Mutex
	last map[string]int64
}

func (p *progressPrinter) report(desc ocispec.Descriptor, done int64) {
	tenth := int64(10)
	if desc.Size > 0 {
		tenth = done * 10 / desc.Size
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	key := desc.Digest.String()
	if last, ok := p.last[key]; ok && tenth <= last {
		return
	}
	p.last[key] = tenth
	fmt.Fprintf(p.w, "%s %s: %s of %s (%d%%)\n", p.verb, shortDigest(desc), humanSize(done), humanSize(desc.Size), tenth*10)
}

func shortDigest(desc ocispec.Descriptor) string {
	enc := desc.Digest.Encoded()
	if len(enc) > 12 {
		enc = enc[:12]
	}
	return desc.Digest.Algorithm().String() + ":" + enc
}
