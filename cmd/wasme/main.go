// Command wasme builds, ships and deploys WebAssembly filters for Envoy on Kubernetes.
package main

import (
	"os"

	"wasme.io/wasme/internal/cli"
)

func main() { os.Exit(cli.Execute()) }
