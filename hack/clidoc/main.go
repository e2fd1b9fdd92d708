// Command clidoc writes docs/cli.md from wasme's cobra command tree (make generate), so the
// reference lists exactly the verbs and flags the binary has.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"wasme.io/wasme/internal/cli"
)

func main() {
	out := flag.String("out", "docs/cli.md", "file to write")
	flag.Parse()
	var b bytes.Buffer
	if err := cli.WriteReference(&b); err != nil {
		fmt.Fprintln(os.Stderr, "clidoc:", err)
		os.Exit(1)
	}
	// Written beside the target and renamed, so an interrupted run leaves no partial page.
	tmp, err := os.CreateTemp(filepath.Dir(*out), ".cli.md.*")
	if err == nil {
		_, err = tmp.Write(b.Bytes())
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Chmod(tmp.Name(), 0o644)
		}
		if err == nil {
			err = os.Rename(tmp.Name(), *out)
		}
		if err != nil {
			_ = os.Remove(tmp.Name()) // best effort; err says what failed
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "clidoc:", err)
		os.Exit(1)
	}
}
