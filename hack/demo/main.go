// Command demo is `make demo`: the seed article's walkthrough on wasme's local control plane
// (internal/testing/localcluster: kube-apiserver, etcd, istiod, the distribution registry, wasme operator and
// node cache, all on 127.0.0.1, and a test proxy standing in for the details-v1 sidecar).
//
//	go run ./hack/demo          # run it, print each step, stop everything, exit 0
//	go run ./hack/demo --keep   # keep it running and print how to use it with kubectl
//
// The first run builds the pinned tools (etcd, kube-apiserver, istiod, the registry); their
// build progress is printed. `make demo` runs hack/prereqs.sh first, which says what will be
// built and about how long it takes.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
	"wasme.io/wasme/internal/validation"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"wasme.io/wasme/internal/testing/localcluster"
)

func main() {
	validation.ServeChildIfAsked() // the in-process operator's validation children
	keep := flag.Bool("keep", false, "keep the control plane running after the walkthrough, until Ctrl-C")
	dir := flag.String("dir", "", "working directory (kubeconfig, logs, node caches); default: a temporary one, removed at exit")
	flag.Parse()
	// controller-runtime (envtest, clients) logs through a global logger; unset, it prints a
	// stack trace after 30 s. The demo's own output is its steps; the components log to files.
	ctrllog.SetLogger(logr.Discard())
	if err := run(*keep, *dir); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(keep bool, dir string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	began := time.Now()
	fmt.Println("==> building the pinned tools if needed (etcd, kube-apiserver, istiod, registry: minutes on the first run)")
	if keep && dir == "" {
		// Kept up, the directory must outlive nothing but this process; still, say where it is.
		d, err := os.MkdirTemp("", "wasme-demo-")
		if err != nil {
			return err
		}
		dir = d
		defer os.RemoveAll(d)
	}
	// Two nodes, so the wasme-cache DaemonSet has two pods and the operator waits for both.
	c, err := localcluster.Start(ctx, localcluster.Options{Dir: dir, Progress: os.Stdout, Nodes: 2})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("==> stopping the local control plane")
		c.Stop()
	}()
	if err := c.DeployBookinfo(ctx); err != nil {
		return err
	}
	if err := c.StartWasme(ctx, localcluster.WasmeOptions{}); err != nil {
		return err
	}
	fmt.Printf("==> control plane up in %s\n", time.Since(began).Round(100*time.Millisecond))
	res, err := c.SeedWalkthrough(ctx, os.Stdout)
	if err != nil {
		return fmt.Errorf("%w\n(logs in %s: istiod/istiod.log, operator.log, nodes/*/cache.log)", err, c.Dir)
	}
	defer res.Sidecar.Close() //nolint:errcheck // stopping the proxy on the way out; its log has what went wrong
	if !keep {
		fmt.Printf("\n==> demo done in %s (make demo KEEP=1 keeps it running)\n", time.Since(began).Round(100*time.Millisecond))
		return nil
	}
	fmt.Printf(`
==> the local control plane keeps running; Ctrl-C stops it.

  export KUBECONFIG=%s
  kubectl get fd,envoyfilters -n bookinfo
  kubectl get pods -A
  kubectl get nodecaches
  kubectl edit fd bookinfo-custom-filter -n bookinfo   # e.g. config: '{"name":"hello","value":"there"}'
  curl -I %s/details/123                 # the details-v1 sidecar (xDS test proxy), follows istiod

  registry:  %s (CA: %s)
  istiod:    xDS %s, debug http://%s/debug/configz
  logs:      %s/{istiod/istiod.log,operator.log,nodes/*/cache.log}
`, c.Kubeconfig, res.Sidecar.URL(), c.Registry.Host, c.Registry.CAFile, c.Istiod.XDSAddr, c.Istiod.HTTPAddr, c.Dir)
	<-ctx.Done()
	return nil
}
