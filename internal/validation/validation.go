// Package validation runs untrusted modules where they cannot hurt the operator: each
// validation (the module's checks and the filter's own proxy_on_vm_start/proxy_on_configure,
// on wasmhost) runs in a child process, the wasme binary itself under a hidden verb, with a
// wall-clock budget, an address-space and a CPU limit, an empty environment (no ServiceAccount
// token, no cluster addresses) and nothing to reach: the guest has no filesystem and no
// network, the child needs neither. The verdict comes back as one JSON line on stdout.
//
// A module that crashes, hangs or bloats the child costs that child; the operator reads the
// outcome as a refusal naming the limit.
package validation

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"wasme.io/wasme/internal/wasmhost"
)

// Verb is the hidden wasme subcommand that runs one validation (Child).
const Verb = "validate-module"

// Defaults for the zero values of Limits.
const (
	DefaultTimeout      = 10 * time.Second
	DefaultAddressSpace = 384 << 20
	DefaultGuestMemory  = wasmhost.DefaultMemoryLimit
	DefaultConcurrency  = 2
)

// Limits bound one validation.
type Limits struct {
	// Timeout is the wall-clock budget of the whole validation: process start, compile,
	// instantiation, proxy_on_vm_start and proxy_on_configure.
	Timeout time.Duration
	// AddressSpace is how much address space (RLIMIT_AS) the child may map beyond what it
	// has mapped when it starts: compiled code, the guest's memory, host-side state.
	AddressSpace uint64
	// GuestMemory caps the guest's linear memory (wasmhost.PluginConfig.MemoryLimit).
	GuestMemory uint64
}

func (l Limits) withDefaults() Limits {
	if l.Timeout <= 0 {
		l.Timeout = DefaultTimeout
	}
	if l.AddressSpace == 0 {
		l.AddressSpace = DefaultAddressSpace
	}
	if l.GuestMemory == 0 {
		l.GuestMemory = DefaultGuestMemory
	}
	return l
}

// cpuSeconds is the RLIMIT_CPU of the child: the budget, rounded up. The child runs its guest
// on one thread (GOMAXPROCS=1), so CPU time beyond the wall-clock budget means the
// runtime's own threads spin with it; the kernel then kills it even if the clock is late.
func (l Limits) cpuSeconds() uint64 { return uint64((l.Timeout + time.Second - 1) / time.Second) }

// Runner starts validation children.
type Runner struct {
	// Executable is the wasme binary to run with Verb. Empty means os.Executable().
	Executable string
	Limits     Limits
	// Concurrency bounds the children running at once (each may use Limits.AddressSpace).
	// Zero means DefaultConcurrency.
	Concurrency int
	// Log receives one line per validation: outcome, duration, peak RSS.
	Log *slog.Logger

	sem chan struct{}
}

// Result is the outcome of one validation.
type Result struct {
	// Err is nil when the module passed; otherwise it says why not, naming the limit broken.
	Err error
	// Limit names the limit the module broke, if that is why it failed.
	Limit string
	// Duration is the wall-clock time of the child, from start to exit.
	Duration time.Duration
	// MaxRSS is the child's peak resident set size: as it reported it, or for a child that died
	// without a verdict its rusage, which is at least the operator's own peak (see verdict).
	MaxRSS uint64
}

// NewRunner returns a Runner with its defaults filled in.
func NewRunner(exe string, limits Limits, log *slog.Logger) (*Runner, error) {
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("validation: finding the wasme executable: %w", err)
		}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Runner{Executable: exe, Limits: limits.withDefaults(), Concurrency: DefaultConcurrency, Log: log}
	r.sem = make(chan struct{}, r.Concurrency)
	return r, nil
}

// Validate runs one validation in a child and returns its verdict as an error (nil: passed).
// A module that broke a limit gets a *LimitError; others the filter's or the host's own
// refusal.
func (r *Runner) Validate(ctx context.Context, module []byte, rootID string, config []byte) error {
	res := r.Run(ctx, module, rootID, config)
	if res.Err != nil && res.Limit != "" {
		return &LimitError{Limit: res.Limit, Err: res.Err}
	}
	return res.Err
}

// LimitError is a validation stopped because the module broke a limit.
type LimitError struct {
	// Limit is "time", "cpu", "memory", or a host limit of wasmhost ("shared data (16 MiB per VM)").
	Limit string
	Err   error
}

func (e *LimitError) Error() string { return e.Err.Error() }
func (e *LimitError) Unwrap() error { return e.Err }

// Transient says the verdict may differ on another try: time and CPU depend on the machine's
// load, not only on the module.
func (e *LimitError) Transient() bool { return e.Limit == "time" || e.Limit == "cpu" }

// request is the header line the child reads before the module bytes.
type request struct {
	RootID       string        `json:"rootID"`
	Config       []byte        `json:"config"`
	ModuleSize   int           `json:"moduleSize"`
	Timeout      time.Duration `json:"timeout"`
	AddressSpace uint64        `json:"addressSpace"`
	GuestMemory  uint64        `json:"guestMemory"`
}

// verdict is the child's one line on stdout.
type verdict struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	Limit string `json:"limit,omitempty"`
	// PeakRSS is the child's VmHWM when it answers. The rusage of a child started with
	// vfork, as Go's exec does, reports the parent's peak when it is higher.
	PeakRSS uint64 `json:"peakRSS,omitempty"`
}

// maxVerdictBytes bounds what is read of the child's stdout and kept of its stderr.
const maxVerdictBytes = 64 << 10

// Run runs one validation in a child process.
func (r *Runner) Run(ctx context.Context, module []byte, rootID string, config []byte) Result {
	select {
	case r.sem <- struct{}{}:
		defer func() { <-r.sem }()
	case <-ctx.Done():
		return Result{Err: fmt.Errorf("validation: waiting for a free validation slot: %w", ctx.Err())}
	}
	l := r.Limits
	res := r.run(ctx, module, rootID, config, l)
	r.Log.Info("validated a module", "ok", res.Err == nil, "limit", res.Limit,
		"duration", res.Duration.Round(time.Millisecond).String(), "maxRSSBytes", res.MaxRSS)
	return res
}

func (r *Runner) run(ctx context.Context, module []byte, rootID string, config []byte, l Limits) Result {
	header, err := json.Marshal(request{
		RootID: rootID, Config: config, ModuleSize: len(module),
		Timeout: l.Timeout, AddressSpace: l.AddressSpace, GuestMemory: l.GuestMemory,
	})
	if err != nil {
		return Result{Err: fmt.Errorf("validation: %w", err)}
	}
	// The child's own deadline is the budget; the parent's is a little later, so that a child
	// that reports in time is read rather than killed.
	cctx, cancel := context.WithTimeout(ctx, l.Timeout+time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, r.Executable, Verb)
	// GOTRACEBACK=none: a runtime death prints its one-line reason ("out of memory") only.
	cmd.Env = []string{"GOMAXPROCS=1", "GOTRACEBACK=none"}
	cmd.Dir = "/"
	cmd.Stdin = io.MultiReader(bytes.NewReader(header), strings.NewReader("\n"), bytes.NewReader(module))
	stdout := &capped{max: maxVerdictBytes}
	stderr := &capped{max: maxVerdictBytes}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	start := time.Now()
	runErr := cmd.Run()
	res := Result{Duration: time.Since(start)}
	if cmd.ProcessState != nil {
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			res.MaxRSS = uint64(ru.Maxrss) << 10 // KiB on Linux
		}
	}
	line, _, _ := bytes.Cut(stdout.Bytes(), []byte("\n"))
	var v verdict
	if json.Unmarshal(line, &v) == nil && (v.OK || v.Error != "") {
		if v.PeakRSS > 0 {
			res.MaxRSS = v.PeakRSS
		}
		if !v.OK {
			res.Err, res.Limit = errors.New(v.Error), v.Limit
		}
		return res
	}
	if runErr == nil {
		res.Err = fmt.Errorf("validation: the validation process exited without a verdict, answering %q", truncate(string(line), 200))
		return res
	}
	// No verdict: the child died. Say of which limit.
	errText := stderr.String()
	cpu := time.Duration(0)
	if cmd.ProcessState != nil {
		cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	switch {
	case errors.Is(cctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil:
		res.Limit = "time"
		res.Err = fmt.Errorf("validation did not finish within its time budget of %v and was stopped", l.Timeout)
	case ctx.Err() != nil:
		res.Err = fmt.Errorf("validation: %w", ctx.Err())
	case strings.Contains(errText, "out of memory") || strings.Contains(errText, "cannot allocate memory"):
		res.Limit = "memory"
		res.Err = fmt.Errorf("validation ran out of memory: the module needs more than the validation memory limit of %d MiB of address space", l.AddressSpace>>20)
	case signaled(cmd.ProcessState, syscall.SIGKILL, syscall.SIGXCPU) && cpu >= time.Duration(l.cpuSeconds())*time.Second-100*time.Millisecond:
		res.Limit = "cpu"
		res.Err = fmt.Errorf("validation used its CPU limit of %ds and was stopped", l.cpuSeconds())
	default:
		res.Err = fmt.Errorf("validation process failed (%w): %s", runErr, truncate(firstLine(errText), 512))
	}
	return res
}

func signaled(ps *os.ProcessState, sigs ...syscall.Signal) bool {
	if ps == nil {
		return false
	}
	ws, ok := ps.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() {
		return false
	}
	for _, s := range sigs {
		if ws.Signal() == s {
			return true
		}
	}
	return false
}

// Child is the body of the hidden verb: it limits its own process, reads one request and the
// module from stdin, validates, and writes the verdict line to stdout. It returns the exit
// code.
func Child(stdin io.Reader, stdout io.Writer) int {
	closeInheritedFiles()
	br := bufio.NewReaderSize(stdin, 64<<10)
	header, err := readLine(br, 4<<20)
	if err != nil {
		return answer(stdout, verdict{Error: "validation: reading the request: " + err.Error()})
	}
	var req request
	if err := json.Unmarshal(header, &req); err != nil {
		return answer(stdout, verdict{Error: "validation: malformed request: " + err.Error()})
	}
	l := Limits{Timeout: req.Timeout, AddressSpace: req.AddressSpace, GuestMemory: req.GuestMemory}.withDefaults()
	if err := limitSelf(l, req.ModuleSize); err != nil {
		return answer(stdout, verdict{Error: "validation: limiting the validation process: " + err.Error()})
	}
	if req.ModuleSize < 0 || uint64(req.ModuleSize) > l.AddressSpace {
		return answer(stdout, verdict{Error: fmt.Sprintf("validation: module size %d out of range", req.ModuleSize), Limit: "memory"})
	}
	module := make([]byte, req.ModuleSize)
	if _, err := io.ReadFull(br, module); err != nil {
		return answer(stdout, verdict{Error: "validation: reading the module: " + err.Error()})
	}
	ctx, cancel := context.WithTimeout(context.Background(), l.Timeout)
	defer cancel()
	err = wasmhost.ValidateWith(ctx, wasmhost.PluginConfig{
		Module: module, RootID: req.RootID, Configuration: req.Config,
		StartTimeout: l.Timeout, MemoryLimit: l.GuestMemory,
	})
	if err == nil {
		return answer(stdout, verdict{OK: true})
	}
	v := verdict{Error: err.Error()}
	if le, ok := wasmhost.AsLimitError(err); ok {
		v.Limit = le.Limit
	} else if ctx.Err() != nil {
		v.Limit = "time"
	}
	return answer(stdout, v)
}

func answer(w io.Writer, v verdict) int {
	v.PeakRSS, _ = procStatus("VmHWM:")
	b, _ := json.Marshal(v)
	if _, err := w.Write(append(b, '\n')); err != nil {
		return 2
	}
	return 0
}

func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > max {
			return nil, fmt.Errorf("request header longer than %d bytes", max)
		}
		switch {
		case err == nil:
			return line[:len(line)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return nil, err
		}
	}
}

// limitSelf applies the CPU and address-space limits to this process. The address space is
// counted from what the process maps now (the Go runtime reserves some at start), plus room
// for the module bytes it is about to read.
func limitSelf(l Limits, moduleSize int) error {
	cpu := l.cpuSeconds()
	if err := syscall.Setrlimit(syscall.RLIMIT_CPU, &syscall.Rlimit{Cur: cpu, Max: cpu}); err != nil {
		return fmt.Errorf("RLIMIT_CPU: %w", err)
	}
	vm, err := procStatus("VmSize:")
	if err != nil {
		return err
	}
	as := vm + l.AddressSpace + uint64(max(moduleSize, 0))
	if err := syscall.Setrlimit(syscall.RLIMIT_AS, &syscall.Rlimit{Cur: as, Max: as}); err != nil {
		return fmt.Errorf("RLIMIT_AS: %w", err)
	}
	return nil
}

// closeInheritedFiles closes the descriptors this process inherited beyond stdin, stdout and
// stderr: Go's exec passes on whatever the operator itself inherited without close-on-exec.
// The Go runtime's own descriptors are all close-on-exec, which tells them apart.
func closeInheritedFiles() {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue
		}
		flags, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFD, 0)
		if errno == 0 && flags&syscall.FD_CLOEXEC == 0 {
			_ = syscall.Close(fd) // best effort: an fd that will not close is the kernel's
		}
	}
}

// procStatus returns a size field of /proc/self/status ("VmSize:" the mapped address space,
// "VmHWM:" the peak resident set) in bytes.
func procStatus(field string) (uint64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			kib, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parsing %s %q: %w", field, rest, err)
			}
			return kib << 10, nil
		}
	}
	return 0, fmt.Errorf("no %s in /proc/self/status", field)
}

// capped keeps the first max bytes of what is written.
type capped struct {
	max int
	buf []byte
}

func (c *capped) Write(p []byte) (int, error) {
	n := len(p)
	if room := c.max - len(c.buf); room > 0 {
		c.buf = append(c.buf, p[:min(room, len(p))]...)
	}
	return n, nil
}

func (c *capped) Bytes() []byte  { return c.buf }
func (c *capped) String() string { return string(c.buf) }

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// ServeChildIfAsked runs Child and exits when this process was started as a validation child
// (os.Args[1] is Verb). Programs that run the operator in-process besides the wasme binary
// (test binaries, the local cluster, the benchmark) call it first in main or TestMain, since
// the operator starts its own executable for each validation.
func ServeChildIfAsked() {
	if len(os.Args) > 1 && os.Args[1] == Verb {
		os.Exit(Child(os.Stdin, os.Stdout))
	}
}
