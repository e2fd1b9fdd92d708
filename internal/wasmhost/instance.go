package wasmhost

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/sys"
)

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

var _ io.Writer = (*guestLog)(nil)
