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
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/sys"
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

// Cache holds compiled modules so that validating a module and then running it, or running
// it in several plugins, compiles it once. It is keyed by the module's hash and never evicts;
// close it when done.
type Cache struct{ cc wazero.CompilationCache }

// NewCache returns an empty in-memory compilation cache.
func NewCache() *Cache { return &Cache{cc: wazero.NewCompilationCache()} }

// Close releases the cached code.
func (c *Cache) Close(ctx context.Context) error { return c.cc.Close(ctx) }

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

// Validate checks what Envoy would need to load the filter: a WebAssembly binary with a
// proxy-wasm ABI export and only imports this host provides, that starts, accepts its VM start
// and accepts config under rootID. The error says which step failed and includes the filter's
// own error log lines.
func Validate(ctx context.Context, module []byte, rootID string, config []byte) error {
	return validate(ctx, module, rootID, config, nil)
}

func validate(ctx context.Context, module []byte, rootID string, config []byte, cache *Cache) error {
	return ValidateWith(ctx, PluginConfig{Cache: cache, Module: module, RootID: rootID, Configuration: config})
}

// ValidateWith is Validate with the limits of cfg (StartTimeout, MemoryLimit, Cache); it runs
// one instance, with its log discarded except what the error quotes.
func ValidateWith(ctx context.Context, cfg PluginConfig) error {
	cfg.Name, cfg.PoolSize, cfg.Logger = "validate", 1, slog.New(slog.DiscardHandler)
	p, err := NewPlugin(ctx, cfg)
	if err != nil {
		return err
	}
	return p.Close(ctx)
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

func checkMagic(b []byte) error {
	if len(b) < 8 || !bytes.Equal(b[:4], []byte("\x00asm")) {
		return errors.New("wasmhost: not a WebAssembly binary (missing \\0asm magic)")
	}
	if !bytes.Equal(b[4:8], []byte{1, 0, 0, 0}) {
		return fmt.Errorf("wasmhost: unsupported WebAssembly binary version %x (want 1, the core format)", b[4:8])
	}
	return nil
}

// checkModule refuses modules Envoy would not load, naming every reason (CheckModule).
func (p *Plugin) checkModule() error {
	info, err := checkCompiled(p.cfg.Module, p.compiled)
	if err != nil {
		return err
	}
	p.abi = "proxy_abi_version_" + strings.ReplaceAll(info.ABI, ".", "_")
	return nil
}

// instance is one VM: a module instance with its root context and the streams it serves.
// mu serializes every call into it.
type instance struct {
	p      *Plugin
	mod    api.Module
	mu     sync.Mutex
	broken atomic.Pointer[error]

	root    uint32
	nextID  uint32
	streams map[uint32]*stream
	active  uint32  // effective context of the current call
	cur     *stream // stream of the active context; nil for the root context
	props   map[string][]byte

	fnMu sync.Mutex // exported() is also asked outside the instance lock (queue notifications)
	fns  map[string]api.Function

	tickPeriod time.Duration
	tickNanos  atomic.Int64 // tickPeriod, readable without mu
	nextTick   time.Time

	// Pending proxy_on_queue_ready notifications; see notifyQueue.
	queueMu        sync.Mutex
	queuePending   map[uint32]bool
	queueNotifying bool

	wasiOut [2]guestLog // stdout and stderr, written by WASI fd_write
	calling string      // the callback running now; host functions answer by it

	starting bool     // inside start-up calls: keep the filter's complaints for the error
	startLog []string // bounded
}

func (in *instance) err() error {
	if e := in.broken.Load(); e != nil {
		return *e
	}
	return nil
}

func (in *instance) fail(err error) {
	in.broken.CompareAndSwap(nil, &err)
}

type instanceKey struct{}

func instanceFrom(ctx context.Context) *instance {
	in, _ := ctx.Value(instanceKey{}).(*instance)
	return in
}

// guestLog routes the guest's stdout or stderr to the plugin log, a line at a time: the Go
// runtime, for one, writes a panic message in many small pieces.
type guestLog struct {
	in    *instance
	level LogLevel
	buf   []byte
}

func (g *guestLog) Write(b []byte) (int, error) {
	g.buf = append(g.buf, b...)
	for {
		i := bytes.IndexByte(g.buf, '\n')
		if i < 0 {
			break
		}
		g.in.logLine(g.level, string(g.buf[:i]))
		g.buf = g.buf[i+1:]
	}
	if len(g.buf) > 4096 {
		g.in.logLine(g.level, string(g.buf))
		g.buf = nil
	}
	return len(b), nil
}

func (p *Plugin) newInstance(ctx context.Context) (*instance, error) {
	in := &instance{p: p, streams: map[uint32]*stream{}, starting: true}
	mc := wazero.NewModuleConfig().
		WithName(""). // anonymous, so a runtime can hold many instances of one module
		WithStartFunctions().
		WithSysWalltime().
		WithSysNanotime().
		WithRandSource(rand.Reader)
	// The Wasm start section runs inside InstantiateModule: bound it like the other start-up
	// calls (the runtime closes the module when the context ends).
	ictx, cancel := context.WithTimeout(ctx, p.cfg.StartTimeout)
	defer cancel()
	mod, err := p.rt.InstantiateModule(ictx, p.compiled, mc)
	if err != nil {
		var exit *sys.ExitError
		if errors.Is(ictx.Err(), context.DeadlineExceeded) || (errors.As(err, &exit) && exit.ExitCode() == sys.ExitCodeDeadlineExceeded) {
			return nil, fmt.Errorf("wasmhost: instantiate: the module's start function did not return within %v (the start-up time limit); the instance was stopped", p.cfg.StartTimeout)
		}
		return nil, fmt.Errorf("wasmhost: instantiate: %w", err)
	}
	in.mod = mod
	in.mu.Lock()
	defer in.mu.Unlock()
	if err := in.start(ctx); err != nil {
		mod.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	in.starting = false
	in.startLog = nil
	return in, nil
}

func (in *instance) start(ctx context.Context) error {
	p := in.p
	switch {
	case in.exported("_initialize"):
		if _, err := in.call(ctx, p.cfg.StartTimeout, "_initialize"); err != nil {
			return in.startErr(err)
		}
		if in.exported("main") {
			if _, err := in.call(ctx, p.cfg.StartTimeout, "main", 0, 0); err != nil {
				return in.startErr(err)
			}
		}
	case in.exported("_start"):
		if _, err := in.call(ctx, p.cfg.StartTimeout, "_start"); err != nil {
			var exit *sys.ExitError
			if errors.As(err, &exit) && exit.ExitCode() == 0 {
				return errors.New("wasmhost: _start ran the program to its end and exited; a filter must stay loaded (build Go filters with -buildmode=c-shared)")
			}
			return in.startErr(err)
		}
	}
	in.nextID = 1
	in.root = in.nextID
	in.active = in.root
	if in.exported("proxy_on_context_create") {
		if _, err := in.call(ctx, p.cfg.StartTimeout, "proxy_on_context_create", uint64(in.root), 0); err != nil {
			return in.startErr(err)
		}
	}
	if in.exported("proxy_on_vm_start") {
		ok, err := in.call(ctx, p.cfg.StartTimeout, "proxy_on_vm_start", uint64(in.root), uint64(len(p.cfg.VMConfiguration)))
		if err != nil {
			return in.startErr(err)
		}
		if uint32(ok) == 0 {
			return in.rejected("proxy_on_vm_start returned false: the filter failed to start")
		}
	}
	if in.exported("proxy_on_configure") {
		ok, err := in.call(ctx, p.cfg.StartTimeout, "proxy_on_configure", uint64(in.root), uint64(len(p.cfg.Configuration)))
		if err != nil {
			return in.startErr(err)
		}
		if uint32(ok) == 0 {
			return in.rejected(fmt.Sprintf("proxy_on_configure returned false: the filter rejected its configuration (root id %q)", p.cfg.RootID))
		}
	}
	return nil
}

func (in *instance) rejected(msg string) error {
	if len(in.startLog) > 0 {
		msg += "; filter log: " + strings.Join(in.startLog, " | ")
	}
	return errors.New("wasmhost: " + msg)
}

func (in *instance) startErr(err error) error {
	if len(in.startLog) > 0 {
		return fmt.Errorf("%w; filter log: %s", err, strings.Join(in.startLog, " | "))
	}
	return err
}

func (in *instance) exported(name string) bool {
	return in.fn(name) != nil
}

// fn returns the guest export name, or nil. wazero allocates a call engine (with its stack)
// for every ExportedFunction lookup, so each instance keeps its own; an api.Function is not
// safe for concurrent use, which the instance lock already rules out.
func (in *instance) fn(name string) api.Function {
	in.fnMu.Lock()
	defer in.fnMu.Unlock()
	if f, ok := in.fns[name]; ok {
		return f
	}
	if in.fns == nil {
		in.fns = map[string]api.Function{}
	}
	f := in.mod.ExportedFunction(name)
	in.fns[name] = f
	return f
}

// call runs one guest export with a deadline. The deadline is detached from ctx's
// cancellation: a client going away must not tear down a VM that other streams use. Any error
// leaves the instance broken; it is discarded from the pool.
func (in *instance) call(ctx context.Context, timeout time.Duration, name string, args ...uint64) (uint64, error) {
	if err := in.err(); err != nil {
		return 0, err
	}
	f := in.fn(name)
	if f == nil {
		return 0, fmt.Errorf("wasmhost: %s is not exported", name)
	}
	if n := len(f.Definition().ParamTypes()); n < len(args) {
		args = args[:n] // older ABIs take fewer parameters, e.g. no end_of_stream in 0.1.0
	} else if n > len(args) {
		args = append(args, make([]uint64, n-len(args))...)
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	cctx = context.WithValue(cctx, instanceKey{}, in)
	prev := in.calling
	in.calling = name
	defer func() { in.calling = prev }()
	res, err := guard(func() ([]uint64, error) { return f.Call(cctx, args...) })
	if err != nil {
		err = in.describe(name, timeout, cctx, err)
		in.fail(err)
		return 0, err
	}
	if len(res) == 0 {
		return 0, nil
	}
	return res[0], nil
}

// guard turns a panic escaping a guest call into an error. wazero recovers panics of host
// functions itself; this catches the rest (a host bug must cost one instance, not the process).
func guard(f func() ([]uint64, error)) (res []uint64, err error) {
	defer func() {
		if r := recover(); r != nil {
			if le, ok := r.(*LimitError); ok {
				err = le
				return
			}
			err = fmt.Errorf("host panic: %v", r)
		}
	}()
	return f()
}

func (in *instance) describe(name string, timeout time.Duration, cctx context.Context, err error) error {
	if le, ok := AsLimitError(err); ok {
		return fmt.Errorf("wasmhost: %s: %w", name, le)
	}
	var exit *sys.ExitError
	if errors.As(err, &exit) {
		switch {
		case exit.ExitCode() == sys.ExitCodeDeadlineExceeded || errors.Is(cctx.Err(), context.DeadlineExceeded):
			return fmt.Errorf("wasmhost: %s did not return within %v; the instance was stopped", name, timeout)
		case in.nearMemoryLimit():
			return fmt.Errorf("wasmhost: %s: the module exited with code %d after reaching the memory limit of %d MiB", name, exit.ExitCode(), in.p.cfg.MemoryLimit>>20)
		default:
			return fmt.Errorf("wasmhost: %s: the module exited with code %d", name, exit.ExitCode())
		}
	}
	if in.nearMemoryLimit() {
		return fmt.Errorf("wasmhost: %s trapped near the memory limit of %d MiB: %w", name, in.p.cfg.MemoryLimit>>20, err)
	}
	return fmt.Errorf("wasmhost: %s trapped: %w", name, err)
}

// nearMemoryLimit tells an allocation failure from other exits: within 8 MiB of the cap, the
// guest most likely failed to grow its memory.
func (in *instance) nearMemoryLimit() bool {
	// ExportedMemory returns an untyped nil when there is none; Memory() would return a typed
	// nil that passes a nil check (checkModule refuses such modules, but stay safe).
	mem := in.mod.ExportedMemory(memoryExport)
	if mem == nil {
		return false
	}
	return uint64(mem.Size())+8<<20 >= in.p.cfg.MemoryLimit
}

func (in *instance) logLine(level LogLevel, msg string) {
	p := in.p
	if in.starting && level >= LogWarn && len(in.startLog) < 8 {
		in.startLog = append(in.startLog, truncate(msg, 512))
	}
	if level < p.cfg.LogLevel {
		return
	}
	var sl slog.Level
	switch {
	case level <= LogDebug:
		sl = slog.LevelDebug
	case level == LogInfo:
		sl = slog.LevelInfo
	case level == LogWarn:
		sl = slog.LevelWarn
	default:
		sl = slog.LevelError
	}
	p.log.Log(context.Background(), sl, msg, "level", level.String())
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// acquire returns a healthy instance, locked, for a new stream: an idle one if there is one,
// a new one while the pool is not full, otherwise the next one in turn (waiting for it).
func (p *Plugin) acquire(ctx context.Context) (*instance, error) {
	for {
		select {
		case <-p.closing:
			return nil, errors.New("wasmhost: plugin closed")
		default:
		}
		p.mu.Lock()
		live := p.insts[:0]
		for _, in := range p.insts {
			if in.err() == nil {
				live = append(live, in)
			} else {
				go in.mod.Close(context.Background())
			}
		}
		clear(p.insts[len(live):])
		p.insts = live
		for _, in := range p.insts {
			if in.mu.TryLock() {
				if in.err() != nil {
					in.mu.Unlock()
					continue
				}
				p.mu.Unlock()
				return in, nil
			}
		}
		if len(p.insts) < p.cfg.PoolSize {
			in, err := p.newInstance(ctx)
			if err != nil {
				p.mu.Unlock()
				return nil, err
			}
			p.insts = append(p.insts, in)
			in.mu.Lock()
			p.mu.Unlock()
			return in, nil
		}
		p.rr = (p.rr + 1) % len(p.insts)
		in := p.insts[p.rr]
		p.mu.Unlock()
		in.mu.Lock()
		if in.err() == nil {
			return in, nil
		}
		in.mu.Unlock()
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

// setTick is called from proxy_set_tick_period_milliseconds.
func (in *instance) setTick(period time.Duration) {
	in.tickPeriod = period
	in.tickNanos.Store(int64(period))
	if period > 0 {
		in.nextTick = time.Now().Add(period)
	}
	select {
	case in.p.tickWake <- struct{}{}:
	default:
	}
}

// tickLoop calls proxy_on_tick on every instance whose period has elapsed. An instance busy
// with a stream is ticked when it is free again, as a busy Envoy worker would.
func (p *Plugin) tickLoop() {
	defer close(p.tickDone)
	defer func() {
		// call() already turns guest failures into errors; anything else is a host bug that
		// must stop the ticks, not the process.
		if r := recover(); r != nil {
			p.log.Error("tick loop stopped by a panic", "panic", fmt.Sprint(r))
		}
	}()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := time.Time{}
		p.mu.Lock()
		insts := append([]*instance(nil), p.insts...)
		p.mu.Unlock()
		for _, in := range insts {
			if in.tickNanos.Load() == 0 {
				continue
			}
			if !in.mu.TryLock() {
				if next.IsZero() || time.Now().Add(5*time.Millisecond).Before(next) {
					next = time.Now().Add(5 * time.Millisecond)
				}
				continue
			}
			if in.tickPeriod > 0 && in.err() == nil {
				if !time.Now().Before(in.nextTick) {
					in.active, in.cur = in.root, nil
					if _, err := in.call(context.Background(), p.cfg.CallTimeout, "proxy_on_tick", uint64(in.root)); err != nil {
						p.log.Error("proxy_on_tick failed", "err", err)
					}
					in.nextTick = time.Now().Add(in.tickPeriod)
				}
				if next.IsZero() || in.nextTick.Before(next) {
					next = in.nextTick
				}
			}
			in.mu.Unlock()
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-p.closing:
			return
		case <-p.tickWake:
		case <-timer.C:
		}
	}
}

var _ io.Writer = (*guestLog)(nil)
