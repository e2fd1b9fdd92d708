// Package components runs wasme's own in-cluster components, `wasme operator` and `wasme
// cache`, inside the calling process for the local cluster, the tests and the bench. Each
// runs with the rest.Config it is given (a shipped ServiceAccount's, so deploy/wasme.yaml's
// RBAC is what it gets, as in a cluster), logs to a file of its own, and is stopped by Stop.
// The hooks the bench needs (a wrapped config counting API calls, a Source counting bytes, a
// fixed module address across restarts) are options, not copies.
package components

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/go-logr/logr"
	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"wasme.io/wasme/internal/cacheprotocol"
	"wasme.io/wasme/internal/nodecache"
	"wasme.io/wasme/internal/operator"
	"wasme.io/wasme/internal/proxystatus"
	"wasme.io/wasme/internal/testing/proc"
)

// OperatorOptions configure StartOperator.
type OperatorOptions struct {
	// Config reaches the API server as the operator.
	Config *rest.Config
	// Scheme is the scheme of the operator's client.
	Scheme *runtime.Scheme
	// ModuleAddr is where the module server listens; empty picks a free loopback port. A
	// restarted operator keeps the node caches' source URL by passing the previous address.
	ModuleAddr string
	// ResolveInterval is how often tags are resolved again; 0 means an hour.
	ResolveInterval time.Duration
	// CacheReportDelay is the operator's --cache-report-delay; 0 means its default.
	CacheReportDelay time.Duration
	// Images pulls modules (CA, plain HTTP options, the egress policy: its default refuses
	// loopback registries).
	Images operator.RegistryImages
	// AllowInsecureRegistries allows plainHttp and insecureSkipVerify in every namespace.
	AllowInsecureRegistries bool
	// SkipNameValidation lets several operators start in one process (controller names are
	// process-global in controller-runtime).
	SkipNameValidation bool
	// LogPath receives the operator's log lines; empty discards them.
	LogPath string
	// ProxyStatus is how the operator reads istiod's per-proxy state; nil turns it off.
	ProxyStatus *proxystatus.Options
}

// Operator is a running operator.
type Operator struct {
	// ModuleAddr is the module server's address.
	ModuleAddr string
	// CAPEM is the CA of the module server's certificate, as the operator published it in
	// ConfigMap wasme/wasme-module-ca.
	CAPEM []byte

	cancel context.CancelFunc
	done   chan error
	logf   io.Closer
}

// StartOperator runs operator.Run until Stop and waits until its module server accepts
// connections (the node caches fetch from it).
func StartOperator(ctx context.Context, o OperatorOptions) (*Operator, error) {
	if o.ResolveInterval == 0 {
		o.ResolveInterval = time.Hour
	}
	addr := o.ModuleAddr
	if addr == "" {
		a, err := proc.FreeAddr()
		if err != nil {
			return nil, err
		}
		addr = a
	}
	log, logf, err := fileLogger(o.LogPath)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	op := &Operator{ModuleAddr: addr, cancel: cancel, done: make(chan error, 1), logf: logf}
	go func() {
		op.done <- operator.Run(runCtx, o.Config, operator.Options{
			MetricsAddr: "0", ProbeAddr: "0", ModuleAddr: addr,
			ResolveInterval:         o.ResolveInterval,
			CacheReportDelay:        o.CacheReportDelay,
			Images:                  o.Images,
			AllowInsecureRegistries: o.AllowInsecureRegistries,
			Scheme:                  o.Scheme,
			SkipNameValidation:      o.SkipNameValidation,
			ProxyStatus:             o.ProxyStatus,
			Log:                     log,
		})
	}()
	deadline := time.Now().Add(time.Minute)
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			// The certificate was made before the server listened, so the CA is out.
			if op.CAPEM, err = readCA(ctx, o.Config, o.Scheme); err != nil {
				_ = op.Stop()
				return nil, err
			}
			return op, nil
		}
		select {
		case err := <-op.done:
			op.closeLog()
			return nil, fmt.Errorf("the operator stopped: %w", err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = op.Stop()
			return nil, errors.New("the operator's module server did not start within a minute")
		}
	}
}

// Stop stops the operator and returns its error, if it failed other than by being stopped.
func (o *Operator) Stop() error {
	o.cancel()
	err := <-o.done
	// Later callers see the same result.
	o.done <- nil
	o.closeLog()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func (o *Operator) closeLog() {
	if o.logf != nil {
		_ = o.logf.Close()
		o.logf = nil
	}
}

func readCA(ctx context.Context, cfg *rest.Config, scheme *runtime.Scheme) ([]byte, error) {
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, err
	}
	cm := &corev1.ConfigMap{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: "wasme", Name: cacheprotocol.DefaultCAConfigMap}, cm); err != nil {
		return nil, fmt.Errorf("reading the module server's CA: %w", err)
	}
	return []byte(cm.Data[cacheprotocol.CAKey]), nil
}

// ClientOptions are the options of a node cache's client of this operator's module server,
// as the DaemonSet gives them: the CA (written into dir) and the Service's name to verify,
// the token in tokenFile.
func (o *Operator) ClientOptions(dir, tokenFile, nodeName string) (cacheprotocol.ClientOptions, error) {
	caFile := filepath.Join(dir, "module-ca.crt")
	if err := os.WriteFile(caFile, o.CAPEM, 0o600); err != nil {
		return cacheprotocol.ClientOptions{}, err
	}
	return cacheprotocol.ClientOptions{
		URL: "https://" + o.ModuleAddr, ServerName: cacheprotocol.ServerName("wasme"),
		TokenFile: tokenFile, CAFile: caFile, NodeName: nodeName,
	}, nil
}

// NodeCacheOptions configure StartNodeCache.
type NodeCacheOptions struct {
	// NodeName is the Node the daemon runs for.
	NodeName string
	// Dir is the node's cache directory.
	Dir string
	// Config reaches the API server as the node cache.
	Config *rest.Config
	// Source is where modules come from; nil means a client of the operator's module server
	// with Client.
	Source nodecache.Source
	// Client makes the default Source (see Operator.ClientOptions).
	Client cacheprotocol.ClientOptions
	// LogPath receives the daemon's log lines; empty discards them.
	LogPath string
}

// NodeCache is a running node cache daemon.
type NodeCache struct {
	// NodeName is its Node.
	NodeName string
	// Dir is its cache directory.
	Dir string
	// Addr is the address it serves modules on (127.0.0.1).
	Addr string
	// Daemon is the daemon itself.
	Daemon *nodecache.Daemon

	cancel context.CancelFunc
	done   chan error
	logf   io.Closer
}

// StartNodeCache runs a node cache daemon until Stop and waits until it serves.
func StartNodeCache(ctx context.Context, o NodeCacheOptions) (*NodeCache, error) {
	src := o.Source
	if src == nil {
		s, err := cacheprotocol.NewClient(o.Client)
		if err != nil {
			return nil, err
		}
		src = s
	}
	log, logf, err := fileLogger(o.LogPath)
	if err != nil {
		return nil, err
	}
	d, err := nodecache.New(nodecache.Options{
		Dir: o.Dir, NodeName: o.NodeName, Config: o.Config, Source: src, Addr: "127.0.0.1:0",
		// Short retries: the module server may start after the daemon.
		MinRetry: 100 * time.Millisecond, MaxRetry: 2 * time.Second,
		Log: log,
	})
	if err != nil {
		if logf != nil {
			logf.Close()
		}
		return nil, fmt.Errorf("node cache on %s: %w", o.NodeName, err)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	n := &NodeCache{NodeName: o.NodeName, Dir: o.Dir, Daemon: d, cancel: cancel, done: make(chan error, 1), logf: logf}
	go func() { n.done <- d.Run(runCtx) }()
	deadline := time.Now().Add(time.Minute)
	for d.Addr() == "" {
		select {
		case err := <-n.done:
			n.done <- err
			_ = n.Stop()
			return nil, fmt.Errorf("node cache on %s stopped: %w", o.NodeName, err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = n.Stop()
			return nil, fmt.Errorf("node cache on %s did not start serving within a minute", o.NodeName)
		}
	}
	n.Addr = d.Addr()
	return n, nil
}

// Stop stops the daemon (it reports Ready=False on the way out) and returns its error, if it
// failed other than by being stopped.
func (n *NodeCache) Stop() error {
	n.cancel()
	err := <-n.done
	n.done <- nil
	if n.logf != nil {
		_ = n.logf.Close()
		n.logf = nil
	}
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// fileLogger is a zap logger writing JSON lines at info level to path; empty path discards.
func fileLogger(path string) (logr.Logger, io.Closer, error) {
	if path == "" {
		return logr.Discard(), nil, nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return logr.Logger{}, nil, err
	}
	return zap.New(zap.WriteTo(f), zap.Level(zapcore.InfoLevel)), f, nil
}
