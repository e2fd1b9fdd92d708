// Package wasmhost is a proxy-wasm host for HTTP filters, built on wazero. It runs the same
// filter bytes Envoy would (proxy-wasm ABI v0.2.1 and v0.2.0, v0.1.0 where cheap), so wasme can
// validate a filter and its configuration before any Envoy sees it, and run a filter locally in
// front of an upstream (`wasme run`).
//
// A Plugin is one configured filter (module + root id + configuration). It owns a small pool
// of VM instances; an instance never runs on two goroutines at once. Plugin.Wrap turns a
// plugin into net/http middleware, Chain runs several in Envoy's filter order.
package wasmhost

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/tetratelabs/wazero"
)

// Defaults for the zero values of PluginConfig.
const (
	DefaultCallTimeout  = time.Second
	DefaultStartTimeout = 10 * time.Second
	DefaultMemoryLimit  = 128 << 20
	DefaultMaxBodyBytes = 1 << 20
	DefaultPauseTimeout = 10 * time.Second
)

const wasmPageSize = 64 << 10

// memoryExport is the name of the guest memory the ABI reads and writes.
const memoryExport = "memory"

// PluginConfig configures one filter, like an Envoy `envoy.filters.http.wasm` entry does.
type PluginConfig struct {
	// Module is the .wasm binary.
	Module []byte
	// Name is the plugin name (property plugin_name; prefix of its log lines).
	Name string
	// RootID selects the root context inside the module (property plugin_root_id).
	RootID string
	// VMID groups plugins that share data and queues (property plugin_vm_id). Plugins with
	// the same non-empty VMID in one process share them, as in Envoy; an empty VMID keeps
	// them private to this plugin.
	VMID string
	// Configuration is the plugin configuration handed to proxy_on_configure.
	Configuration []byte
	// VMConfiguration is handed to proxy_on_vm_start.
	VMConfiguration []byte
	// Env is the VM's environment, "NAME=value" entries, as Envoy builds it from
	// vm_config.environment_variables; the filter reads it through WASI environ_get.
	Env []string
	// FailOpen lets traffic through, skipping the filter, when the filter fails at run time
	// (Envoy's FAIL_OPEN). The default is FAIL_CLOSED: the stream gets a 503.
	FailOpen bool
	// PoolSize is how many VM instances may run this plugin concurrently. Zero means
	// min(GOMAXPROCS, 4).
	PoolSize int
	// CallTimeout bounds every callback into the filter while serving traffic; a guest still
	// running after it is stopped and its instance discarded.
	CallTimeout time.Duration
	// StartTimeout bounds each start-up call: _initialize/_start, proxy_on_vm_start,
	// proxy_on_configure.
	StartTimeout time.Duration
	// MemoryLimit caps the linear memory of each instance, in bytes (rounded down to 64 KiB
	// pages).
	MemoryLimit uint64
	// MaxBodyBytes bounds a body the host buffers for proxy_on_request_body and
	// proxy_on_response_body.
	MaxBodyBytes int
	// PauseTimeout bounds how long a stream paused by the filter waits for
	// proxy_continue_stream.
	PauseTimeout time.Duration
	// Properties adds or overrides attributes for proxy_get_property, keyed by the dotted
	// path ("node.id", "cluster_name", ...).
	Properties map[string][]byte
	// Logger receives the filter's log lines. Nil means slog.Default().
	Logger *slog.Logger
	// LogLevel is what proxy_get_log_level reports; lines below it are dropped.
	LogLevel LogLevel
	// Cache shares compiled code between plugins of the same module. Nil compiles afresh.
	Cache *Cache
}

// Plugin is a running, configured filter.
type Plugin struct {
	cfg      PluginConfig
	log      *slog.Logger
	rt       wazero.Runtime
	compiled wazero.CompiledModule
	abi      string
	shared   *vmShared
	metrics  metricSet

	mu    sync.Mutex
	insts []*instance
	rr    int

	tickWake  chan struct{}
	closing   chan struct{}
	closeOnce sync.Once
	tickDone  chan struct{}
}

// NewPlugin compiles the module, starts one VM instance and configures it, so that a module
// or configuration the filter rejects is reported here, before any traffic.
func NewPlugin(ctx context.Context, cfg PluginConfig) (*Plugin, error) {
	if cfg.PoolSize <= 0 {
		cfg.PoolSize = min(runtime.GOMAXPROCS(0), 4)
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	if cfg.MemoryLimit == 0 {
		cfg.MemoryLimit = DefaultMemoryLimit
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.PauseTimeout <= 0 {
		cfg.PauseTimeout = DefaultPauseTimeout
	}
	if err := checkEnv(cfg.Env); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	p := &Plugin{
		cfg:      cfg,
		log:      log.With("plugin", cfg.Name),
		tickWake: make(chan struct{}, 1),
		closing:  make(chan struct{}),
		tickDone: make(chan struct{}),
	}
	if err := checkMagic(cfg.Module); err != nil {
		return nil, err
	}
	// Before compiling: wazero would allocate a huge table at instantiation, or grow one
	// without end.
	code, err := capTables(cfg.Module)
	if err != nil {
		return nil, fmt.Errorf("wasmhost: %w", err)
	}
	pages := uint32(min(cfg.MemoryLimit/wasmPageSize, 65536))
	rc := wazero.NewRuntimeConfig().
		WithCloseOnContextDone(true).
		WithMemoryLimitPages(pages)
	if cfg.Cache != nil {
		rc = rc.WithCompilationCache(cfg.Cache.cc)
	}
	p.rt = wazero.NewRuntimeWithConfig(ctx, rc)
	ok := false
	defer func() {
		if !ok {
			p.rt.Close(context.WithoutCancel(ctx))
		}
	}()
	if err := instantiateWASI(ctx, p.rt); err != nil {
		return nil, fmt.Errorf("wasmhost: WASI: %w", err)
	}
	if err := p.instantiateEnv(ctx); err != nil {
		return nil, fmt.Errorf("wasmhost: host functions: %w", err)
	}
	compiled, err := p.rt.CompileModule(ctx, code)
	if err != nil {
		return nil, fmt.Errorf("wasmhost: compile: %w", err)
	}
	p.compiled = compiled
	if err := p.checkModule(); err != nil {
		return nil, err
	}
	p.shared = acquireShared(cfg.VMID, p)
	in, err := p.newInstance(ctx)
	if err != nil {
		releaseShared(p.shared)
		return nil, err
	}
	p.insts = append(p.insts, in)
	go p.tickLoop()
	ok = true
	return p, nil
}

// ABIVersion is the proxy-wasm ABI the module declares, e.g. "0.2.1".
func (p *Plugin) ABIVersion() string {
	return strings.ReplaceAll(strings.TrimPrefix(p.abi, "proxy_abi_version_"), "_", ".")
}

// Name is the plugin's configured name.
func (p *Plugin) Name() string { return p.cfg.Name }

// Close stops the plugin's timers and releases its instances.
func (p *Plugin) Close(ctx context.Context) error {
	var err error
	p.closeOnce.Do(func() {
		close(p.closing)
		<-p.tickDone
		releaseShared(p.shared)
		err = p.rt.Close(context.WithoutCancel(ctx))
	})
	return err
}

// maxEnvBytes bounds a VM's environment, which every instance of the pool copies in on request.
const maxEnvBytes = 64 << 10

func checkEnv(env []string) error {
	size := 0
	for _, e := range env {
		if name, _, ok := strings.Cut(e, "="); !ok || name == "" || strings.IndexByte(e, 0) >= 0 {
			return fmt.Errorf("environment entry %q is not NAME=value without NUL bytes", truncateForError(e))
		}
		size += len(e) + 1
	}
	if size > maxEnvBytes {
		return fmt.Errorf("the environment is %d bytes, more than the %d allowed", size, maxEnvBytes)
	}
	return nil
}

func truncateForError(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
