// Command image builds the wasme container image (make image): an OCI image index of
// bin/wasme for each platform on an empty base with CA certificates and the non-root user,
// reproducible from the commit. With -push it pushes to a registry (docker config.json
// credentials); otherwise it writes an OCI layout. It prints, and writes to -ref-file, the
// reference pinned to the digest.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"time"

	"wasme.io/wasme/internal/imagebuild"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "make image:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		push      = flag.String("push", "", "push to this reference (registry.example.com/team/wasme:v0.1.0); empty: write -layout")
		layoutDir = flag.String("layout", "bin/wasme-image", "OCI layout directory written when -push is empty")
		refFile   = flag.String("ref-file", "bin/wasme-image.ref", "file the digest-pinned reference is written to")
		platforms = flag.String("platforms", "linux/amd64,linux/arm64", "comma-separated os/arch list")
		version   = flag.String("version", "dev", "version (label and wasme version)")
		source    = flag.String("source", "", "source repository URL (label); default: git remote origin")
		plainHTTP = flag.Bool("plain-http", false, "push over HTTP (a registry on loopback always is)")
	)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	revision := git("rev-parse", "HEAD")
	created := time.Unix(0, 0)
	if ct, err := strconv.ParseInt(git("log", "-1", "--format=%ct"), 10, 64); err == nil {
		created = time.Unix(ct, 0)
	}
	if *source == "" {
		*source = git("remote", "get-url", "origin")
	}
	labels := map[string]string{imagebuild.LabelVersion: *version}
	if revision != "" {
		labels[imagebuild.LabelRevision] = revision
	}
	if *source != "" {
		labels[imagebuild.LabelSource] = *source
	}
	start := time.Now()
	idx, err := imagebuild.Build(ctx, imagebuild.Spec{
		Package:   "./cmd/wasme",
		Name:      "wasme",
		Platforms: strings.Split(*platforms, ","),
		LDFlags:   "-X wasme.io/wasme/internal/cli.Version=" + *version,
		Labels:    labels,
		Created:   created,
		BuildDir:  "bin/image-build",
	})
	if err != nil {
		return err
	}
	d, err := idx.Digest()
	if err != nil {
		return err
	}
	var ref string
	if *push != "" {
		if ref, err = imagebuild.Push(ctx, *push, idx, *plainHTTP); err != nil {
			return err
		}
	} else {
		if err := imagebuild.WriteLayout(*layoutDir, *version, idx); err != nil {
			return err
		}
		ref = "wasme@" + d.String()
	}
	size, err := imagebuild.CompressedSize(idx)
	if err != nil {
		return err
	}
	if err := os.WriteFile(*refFile, []byte(ref+"\n"), 0o644); err != nil {
		return err
	}
	where := *layoutDir + " (OCI layout)"
	if *push != "" {
		where = "pushed"
	}
	fmt.Printf("%s\n>> %s, %s, %.1f MiB compressed (all platforms, shared layers once), %s\n", ref, where, *platforms,
		float64(size)/(1<<20), time.Since(start).Round(100*time.Millisecond))
	return nil
}

// git returns the trimmed output of a git command, "" when it fails (a source tree without git).
func git(args ...string) string {
	out, err := exec.Command("git", args...).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
