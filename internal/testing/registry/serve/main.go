// Command serve runs the test registry of internal/testing/registry as a process of its own,
// for test modules that cannot import this one (test/interop/istio has its own go.mod):
//
//	go run ./internal/testing/registry/serve -dir DIR
//
// It prints the registry's host ("127.0.0.1:port") on the first line of stdout and serves
// until stdin closes or it gets SIGTERM/SIGINT; then it stops the registry.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"wasme.io/wasme/internal/testing/registry"
)

func main() {
	dir := flag.String("dir", "", "directory for the registry's storage, configuration and log (required)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	r, err := registry.Start(ctx, registry.Options{Dir: *dir, Progress: os.Stderr})
	if err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
	defer r.Stop()
	fmt.Println(r.Host)
	stdinClosed := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(stdinClosed) }()
	select {
	case <-ctx.Done():
	case <-stdinClosed:
	}
}
