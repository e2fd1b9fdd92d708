// Command envoy is wasme's test proxy in Envoy's place in the proxyv2 test image
// (/usr/local/bin/envoy, started by the real pilot-agent); see package standin. It is not Envoy.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"wasme.io/wasme/internal/testing/standin"
)

func main() {
	// Envoy exits on SIGTERM and SIGINT; pilot-agent kills it after its drain period.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := standin.Main(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "wasme-test-proxy (envoy stand-in):", err)
		stop()
		os.Exit(1)
	}
}
