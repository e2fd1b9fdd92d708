package localcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap/zapcore"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"wasme.io/wasme/internal/nodecache"
	"wasme.io/wasme/internal/operator"
	"wasme.io/wasme/internal/testing/proc"
	"wasme.io/wasme/pkg/wasmimage"
)

// WasmeOptions configure StartWasme.
type WasmeOptions struct {
	// ResolveInterval is how often the operator resolves tags again; 0 means an hour (tests
	// and the demo push before they apply).
	ResolveInterval time.Duration
}

// StartWasme runs `wasme operator` in this process and one `wasme cache` daemon per node,
// each with its shipped ServiceAccount's token (deploy/wasme.yaml's RBAC is what they get, so
// a missing permission shows here as it would in a cluster). The operator trusts the local
// registry's CA, as `wasme operator --ca-file` would. Logs go to operator.log and
// <node>/cache.log in the cluster directory.
func (c *Cluster) StartWasme(ctx context.Context, o WasmeOptions) error {
	if o.ResolveInterval == 0 {
		o.ResolveInterval = time.Hour
	}
	c.step("starting wasme operator and one wasme cache per node (in this process, with their ServiceAccounts' RBAC)")
	opCfg, _, err := c.Env.ServiceAccountConfig(ctx, "wasme", "wasme-operator")
	if err != nil {
		return err
	}
	moduleAddr, err := proc.FreeAddr()
	if err != nil {
		return err
	}
	opLog, err := os.OpenFile(filepath.Join(c.Dir, "operator.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	opDone := make(chan error, 1)
	go func() {
		opDone <- operator.Run(runCtx, opCfg, operator.Options{
			MetricsAddr: "0", ProbeAddr: "0", ModuleAddr: moduleAddr,
			ResolveInterval: o.ResolveInterval,
			Images:          operator.RegistryImages{Options: []wasmimage.Option{wasmimage.WithCAPEM(c.Registry.CAPEM)}},
			Scheme:          c.Env.Scheme,
			Log:             zap.New(zap.WriteTo(opLog), zap.Level(zapcore.InfoLevel)),
		})
	}()
	c.stops = append(c.stops, func() {
		cancel()
		if err := <-opDone; err != nil && !errors.Is(err, context.Canceled) {
			fmt.Fprintln(c.progress, "wasme operator:", err)
		}
		opLog.Close()
	})

	cacheCfg, token, err := c.Env.ServiceAccountConfig(ctx, "wasme", "wasme-cache")
	if err != nil {
		return err
	}
	tokenFile := filepath.Join(c.Dir, "wasme-cache.token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		return err
	}
	for _, n := range c.Nodes {
		logDir := filepath.Dir(n.CacheDir)
		lf, err := os.OpenFile(filepath.Join(logDir, "cache.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		src, err := nodecache.NewOperatorSource("http://"+moduleAddr, tokenFile, n.Name)
		if err != nil {
			return err
		}
		d, err := nodecache.New(nodecache.Options{
			Dir: n.CacheDir, NodeName: n.Name, Config: cacheCfg, Source: src, Addr: "127.0.0.1:0",
			// Short retries: the module server starts with the operator, maybe after us.
			MinRetry: 100 * time.Millisecond, MaxRetry: 2 * time.Second,
			Log: zap.New(zap.WriteTo(lf), zap.Level(zapcore.InfoLevel)),
		})
		if err != nil {
			lf.Close()
			return fmt.Errorf("node cache on %s: %w", n.Name, err)
		}
		done := make(chan error, 1)
		go func() { done <- d.Run(runCtx) }()
		c.stops = append(c.stops, func() {
			cancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				fmt.Fprintf(c.progress, "wasme cache on %s: %v\n", n.Name, err)
			}
			lf.Close()
		})
		// Wait until it serves, so CacheAddr is known and the NodeCache says Ready.
		deadline := time.Now().Add(time.Minute)
		for d.Addr() == "" {
			select {
			case err := <-done:
				return fmt.Errorf("node cache on %s stopped: %v", n.Name, err)
			case <-time.After(50 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("node cache on %s did not start serving", n.Name)
			}
		}
		n.CacheAddr = d.Addr()
	}
	return nil
}
