// Package netns gives a test a network namespace of its own (ip netns, loopback up) and lets
// the test process listen and dial inside it: a socket keeps the namespace it was created in,
// so it is created on an OS thread moved into the namespace, which then ends. Programs run in
// it through nsenter. Needs root.
package netns

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// NS is a named network namespace.
type NS struct {
	// Name is its ip-netns name; Path its file under /run/netns.
	Name, Path string
}

// New creates the namespace name (removing a leftover of that name first) with loopback up.
func New(ctx context.Context, name string) (*NS, error) {
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("netns: the ip command (iproute2) is needed: %w", err)
	}
	_ = exec.CommandContext(ctx, "ip", "netns", "delete", name).Run()
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	n := &NS{Name: name, Path: filepath.Join("/run/netns", name)}
	if out, err := exec.CommandContext(ctx, "ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		_ = n.Close()
		return nil, fmt.Errorf("ip -n %s link set lo up: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return n, nil
}

// Close deletes the namespace (what still runs in it keeps it until it exits).
func (n *NS) Close() error {
	if out, err := exec.Command("ip", "netns", "delete", n.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns delete %s: %w: %s", n.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Do runs f on an OS thread inside the namespace. The thread is never handed back to the Go
// scheduler (the goroutine ends locked, so the runtime ends the thread): nothing else ever runs
// in the namespace by accident.
func (n *NS) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open(n.Path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("netns %s: %w", n.Name, err)
			return
		}
		defer unix.Close(fd) //nolint:errcheck // read-only handle
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", n.Name, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// Listen listens inside the namespace.
func (n *NS) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// DialContext connects from inside the namespace (usable as an http.Transport's DialContext).
func (n *NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Command is name with args run inside the namespace (nsenter --net), optionally as uid:gid.
func (n *NS) Command(ctx context.Context, uid int, name string, args ...string) *exec.Cmd {
	a := []string{"--net=" + n.Path}
	if uid >= 0 {
		a = append(a, fmt.Sprintf("--setuid=%d", uid), fmt.Sprintf("--setgid=%d", uid))
	}
	a = append(append(a, "--", name), args...)
	return exec.CommandContext(ctx, "nsenter", a...)
}

// Forward accepts on l and connects each connection to addr from the test's own namespace
// (the way a test gives a namespaced program a host service on loopback), until l is closed.
// A failed connection is reported to onErr (nil: dropped).
func Forward(l net.Listener, addr string, onErr func(error)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close() //nolint:errcheck // done with it
			up, err := net.Dial("tcp", addr)
			if err != nil {
				if onErr != nil {
					onErr(fmt.Errorf("forwarding to %s: %w", addr, err))
				}
				return
			}
			defer up.Close() //nolint:errcheck // done with it
			done := make(chan struct{}, 2)
			go func() { _, _ = copyConn(up, c); done <- struct{}{} }()
			go func() { _, _ = copyConn(c, up); done <- struct{}{} }()
			<-done
		}()
	}
}

// AddLocalLink adds an interface with addr (a CIDR) to the namespace, up: one end of a veth
// pair whose both ends stay inside it (kernels of CI containers may lack the dummy driver), so
// it carries no traffic out of the namespace; programs that look for a non-loopback address of
// "their pod" (pilot-agent istio-iptables does) find it.
func (n *NS) AddLocalLink(ctx context.Context, name, addr string) error {
	for _, args := range [][]string{
		{"-n", n.Name, "link", "add", name, "type", "veth", "peer", "name", name + "p"},
		{"-n", n.Name, "addr", "add", addr, "dev", name},
		{"-n", n.Name, "link", "set", name, "up"},
	} {
		if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}
