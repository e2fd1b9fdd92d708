package localcluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"wasme.io/wasme/internal/operator"
	"wasme.io/wasme/internal/proxystatus"
	"wasme.io/wasme/internal/testing/components"
	"wasme.io/wasme/pkg/wasmimage"
)

// WasmeOptions configure StartWasme.
type WasmeOptions struct {
	// ResolveInterval is how often the operator resolves tags again; 0 means an hour (tests
	// and the demo push before they apply).
	ResolveInterval time.Duration
	// ProxyStatusInterval is how often the operator polls istiod's proxy state; 0 means
	// proxystatus.DefaultInterval.
	ProxyStatusInterval time.Duration
}

// StartWasme runs `wasme operator` in this process and one `wasme cache` daemon per node,
// each with its shipped ServiceAccount's token (deploy/wasme.yaml's RBAC is what they get, so
// a missing permission shows here as it would in a cluster). The operator trusts the local
// registry's CA, as `wasme operator --ca-file` would. Logs go to operator.log and
// <node>/cache.log in the cluster directory.
func (c *Cluster) StartWasme(ctx context.Context, o WasmeOptions) error {
	c.step("starting wasme operator and one wasme cache per node (in this process, with their ServiceAccounts' RBAC)")
	opCfg, _, err := c.Env.ServiceAccountConfig(ctx, "wasme", "wasme-operator")
	if err != nil {
		return err
	}
	// The local registry is on loopback, which the default egress policy refuses: allow
	// exactly its host, as an admin lists an in-cluster registry.
	egress, err := wasmimage.NewEgressPolicy([]string{c.Registry.Host}, nil)
	if err != nil {
		return err
	}
	// As in a cluster: istiod's /debug/syncz on its monitoring port with a token of the
	// operator's ServiceAccount of audience istio-ca (a projected token there). istiod serves
	// loopback callers without checking the token, and here every caller is on loopback.
	proxyStatus := &proxystatus.Options{
		SynczURL: "http://" + c.Istiod.MonitoringAddr + "/debug/syncz",
		Interval: o.ProxyStatusInterval,
		Token: func(ctx context.Context) (string, error) {
			return c.Env.AudienceToken(ctx, "wasme", "wasme-operator", proxystatus.Audience)
		},
	}
	op, err := components.StartOperator(ctx, components.OperatorOptions{
		Config: opCfg, Scheme: c.Env.Scheme, ResolveInterval: o.ResolveInterval, ProxyStatus: proxyStatus,
		Images:  operator.RegistryImages{Options: []wasmimage.Option{wasmimage.WithCAPEM(c.Registry.CAPEM)}, Egress: egress},
		LogPath: filepath.Join(c.Dir, "operator.log"),
	})
	if err != nil {
		return err
	}
	c.stops = append(c.stops, func() {
		if err := op.Stop(); err != nil {
			fmt.Fprintln(c.progress, "wasme operator:", err)
		}
	})

	for _, n := range c.Nodes {
		// As the kubelet mounts them: a token bound to a pod on this node for the API server,
		// and one of audience wasme-cache for the module server.
		cacheCfg, err := c.Env.NodeCacheConfig(ctx, "wasme", n.Name)
		if err != nil {
			return err
		}
		token, err := c.Env.CacheToken(ctx, "wasme", n.Name)
		if err != nil {
			return err
		}
		dir := filepath.Dir(n.CacheDir)
		tokenFile := filepath.Join(dir, "module-token")
		if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
			return err
		}
		clientOpts, err := op.ClientOptions(dir, tokenFile, n.Name)
		if err != nil {
			return err
		}
		nc, err := components.StartNodeCache(ctx, components.NodeCacheOptions{
			NodeName: n.Name, Dir: n.CacheDir, Config: cacheCfg,
			Client:  clientOpts,
			LogPath: filepath.Join(dir, "cache.log"),
		})
		if err != nil {
			return err
		}
		c.stops = append(c.stops, func() {
			if err := nc.Stop(); err != nil {
				fmt.Fprintf(c.progress, "wasme cache on %s: %v\n", n.Name, err)
			}
		})
		n.CacheAddr = nc.Addr
	}
	return nil
}
