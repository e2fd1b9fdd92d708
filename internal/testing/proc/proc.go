// Package proc starts the child processes of wasme's test infrastructure (etcd's and istiod's
// neighbours: the registry, istiod, nginx) with their output in a log file, waits for them to
// answer, and stops them by pid. It also hands out loopback ports.
package proc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// Process is a child process whose output goes to a log file.
type Process struct {
	// Name names the process in errors ("registry", "istiod").
	Name string
	// LogPath is the file holding its stdout and stderr.
	LogPath string

	cmd    *exec.Cmd
	exited chan struct{}
	err    error
}

// Options change how Start runs a process.
type Options struct {
	// Dir is the working directory; empty means the caller's.
	Dir string
	// Env is added to the caller's environment.
	Env []string
}

// Start starts bin with args, its output appended to logPath. The child gets a process group
// of its own, so a Ctrl-C in a terminal reaches the parent first and the parent stops children
// in order, and Pdeathsig, so a killed test binary does not leave it running.
func Start(name, bin string, args []string, logPath string, o Options) (*Process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = o.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), o.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := startOnLockedThread(cmd); err != nil {
		_ = logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &Process{Name: name, LogPath: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		_ = logf.Close() // the process wrote to it; a reader opens it anew
		close(p.exited)
	}()
	return p, nil
}

// Pdeathsig fires when the OS thread that forked the child exits, not the process: Go ends a
// thread whose goroutine exits while locked to it, which the network-namespace helpers
// (internal/testing/netns) do by design, and a registry or istiod forked earlier from that
// thread was killed in the middle of the test run. Children are therefore forked from one
// thread that stays locked, and alive, for the life of the test binary.
var forks = make(chan func())

func init() {
	go func() {
		runtime.LockOSThread()
		for f := range forks {
			f()
		}
	}()
}

func startOnLockedThread(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	forks <- func() { errc <- cmd.Start() }
	return <-errc
}

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Exited is closed once the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Err is the process's exit error, once Exited is closed.
func (p *Process) Err() error { return p.err }

// Stop sends SIGTERM, then SIGKILL after 10 s, and waits for the exit. It is safe to call on
// nil, on a process that exited and more than once.
func (p *Process) Stop() {
	if p == nil {
		return
	}
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// Kill stops the process with SIGKILL at once and waits for the exit (a registry that is down).
func (p *Process) Kill() {
	if p == nil {
		return
	}
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// LogTail is the last n lines of the process's log.
func (p *Process) LogTail(n int) string {
	b, _ := os.ReadFile(p.LogPath)
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	var sb strings.Builder
	for _, l := range lines {
		sb.Write(l)
		sb.WriteByte('\n')
	}
	return sb.String()
}

// WaitHTTP polls url until ok accepts the response status (nil: any 2xx), the process exits,
// ctx ends or timeout passes.
func (p *Process) WaitHTTP(ctx context.Context, hc *http.Client, url string, timeout time.Duration, ok func(status int) bool) error {
	if ok == nil {
		ok = func(s int) bool { return s/100 == 2 }
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if ok(resp.StatusCode) {
				return nil
			}
			err = fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		last = err
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited (%w); log tail:\n%s", p.Name, p.err, p.LogTail(40))
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("%s not ready at %s: %w", p.Name, url, ctx.Err()), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// FreeAddr returns a loopback address with a port the kernel just had free. Another process
// may take it before the caller binds it: callers that hand it to a child retry on failure.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
