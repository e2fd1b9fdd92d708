package node

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The node changes a few host-wide things that cannot be kept inside its network namespace or
// its directory. Each is recorded before the node starts (in stateFile, on tmpfs) and undone
// at Stop, or by the next Start when a test binary died before it could stop its node.
const (
	runDir    = "/run/wasme-node"
	stateFile = runDir + "/state.json"
	lockFile  = runDir + "/lock"
	// netnsName, hostVeth and nodeVeth are fixed: one node per machine at a time (the lock),
	// so a leftover is always found under the same names.
	netnsName = "wasme-node"
	hostVeth  = "wnode0h"
	nodeVeth  = "wnode0n"
)

// sysctlKeys are the host-wide settings kubelet changes at start (setupKernelTunables with
// protectKernelDefaults false) that are not per network namespace.
var sysctlKeys = []string{
	"vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
	"kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes",
}

// hostPaths are fixed host paths kubelet, containerd or CNI create whatever their
// configuration says (shim sockets, the CNI result cache, container log links, the netns
// mount point); the ones that did not exist before the node are removed after it.
var hostPaths = []string{
	"/run/containerd", "/var/lib/cni", "/var/log/containers", "/var/log/pods", "/run/netns",
	"/etc/cni", "/opt/cni", "/var/lib/kubelet", "/var/lib/containerd", "/etc/containerd",
	"/var/run/nri", "/etc/nri", "/opt/nri", "/var/lib/nri",
}

// state is what was true before the node started, and where the node keeps its files.
type state struct {
	Dir     string            `json:"dir"`
	Sysctls map[string]string `json:"sysctls"`
	// Created are host paths that did not exist before and are removed after.
	Created []string `json:"created"`
	// Cgroups are the kubepods cgroup directories that did not exist before.
	Cgroups []string `json:"cgroups"`
}

func readSysctl(key string) (string, error) {
	b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(key, ".", "/"))
	return strings.TrimSpace(string(b)), err
}

func writeSysctl(key, val string) error {
	return os.WriteFile("/proc/sys/"+strings.ReplaceAll(key, ".", "/"), []byte(val), 0o644)
}

// kubepodsCgroups are the cgroup directories kubelet's cgroupfs driver creates: kubepods in
// every cgroup v1 hierarchy, or in the unified one.
func kubepodsCgroups() []string {
	var out []string
	ents, _ := os.ReadDir("/sys/fs/cgroup")
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, filepath.Join("/sys/fs/cgroup", e.Name(), "kubepods"))
		}
	}
	return append(out, "/sys/fs/cgroup/kubepods")
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// snapshot records the host before the node starts.
func snapshot(dir string, extraPaths []string) (*state, error) {
	s := &state{Dir: dir, Sysctls: map[string]string{}}
	for _, k := range sysctlKeys {
		v, err := readSysctl(k)
		if err != nil {
			return nil, fmt.Errorf("reading sysctl %s: %w", k, err)
		}
		s.Sysctls[k] = v
	}
	for _, p := range append(append([]string{}, hostPaths...), extraPaths...) {
		if !exists(p) {
			s.Created = append(s.Created, p)
		}
	}
	for _, c := range kubepodsCgroups() {
		if !exists(c) {
			s.Cgroups = append(s.Cgroups, c)
		}
	}
	return s, nil
}

func (s *state) save() error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	tmp := stateFile + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, stateFile)
}

// lock takes the machine-wide node lock, waiting for another test's node to stop first. The
// lock goes with the process, so a killed test binary frees it.
func lock() (*os.File, error) {
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(lockFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		_ = f.Close() // nothing was locked
		return nil, err
	}
	return f, nil
}

// Lock takes the machine-wide node lock, which Start holds for a node's whole life: holding it,
// a test sees the host with no other test's node on it. Close releases it.
func Lock() (io.Closer, error) { return lock() }

// cleanupLeftovers undoes a node a dead test binary left behind (its state file says what).
func cleanupLeftovers() error {
	b, err := os.ReadFile(stateFile)
	if errors.Is(err, os.ErrNotExist) {
		// No state: still make sure nothing runs under the fixed names.
		return teardown(&state{})
	}
	if err != nil {
		return err
	}
	var s state
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("%s: %w", stateFile, err)
	}
	return teardown(&s)
}

// teardown removes everything the node made: processes in its network namespace and in the
// kubepods cgroups, mounts under its directory, the namespace and veth, the cgroups, host
// paths it created, and puts the sysctls back. It goes on after an error and returns them all.
func teardown(s *state) error {
	var errs []error
	nsIno := nsInode(filepath.Join("/run/netns", netnsName))
	killed := map[int]bool{}
	for attempt := 0; attempt < 50; attempt++ {
		pids := nodePids(nsIno, s.Cgroups)
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			killed[pid] = true
		}
		time.Sleep(100 * time.Millisecond)
		if attempt == 49 {
			errs = append(errs, fmt.Errorf("processes still running after SIGKILL: %v", pids))
		}
	}
	// Killed containers were re-parented to init; give it a moment to reap them.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		left := 0
		for pid := range killed {
			if exists(fmt.Sprintf("/proc/%d", pid)) {
				left++
			}
		}
		if left == 0 {
			break
		}
	}
	if s.Dir != "" {
		if err := unmountUnder(s.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	if exists(filepath.Join("/run/netns", netnsName)) {
		if out, err := exec.Command("ip", "netns", "delete", netnsName).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns delete %s: %w: %s", netnsName, err, out))
		}
	}
	// The veth goes with the namespace, a moment later; one whose peer moved nowhere is deleted.
	for deadline := time.Now().Add(5 * time.Second); exists("/sys/class/net/"+hostVeth) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if exists("/sys/class/net/" + hostVeth) {
		if out, err := exec.Command("ip", "link", "delete", hostVeth).CombinedOutput(); err != nil && exists("/sys/class/net/"+hostVeth) {
			errs = append(errs, fmt.Errorf("ip link delete %s: %w: %s", hostVeth, err, out))
		}
	}
	for _, c := range s.Cgroups {
		if err := removeCgroup(c); err != nil {
			errs = append(errs, err)
		}
	}
	keys := make([]string, 0, len(s.Sysctls))
	for k := range s.Sysctls {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if cur, _ := readSysctl(k); cur != s.Sysctls[k] {
			if err := writeSysctl(k, s.Sysctls[k]); err != nil {
				errs = append(errs, fmt.Errorf("restoring sysctl %s=%s: %w", k, s.Sysctls[k], err))
			}
		}
	}
	if !contains(s.Created, "/var/log/containers") {
		// Kubelet's links to container logs point into the node's own log directory.
		removeLinksInto("/var/log/containers", s.Dir)
	}
	for _, p := range s.Created {
		if p == "/run/netns" && isMountPoint(p) {
			// ip netns makes its directory a mount point of its own.
			_ = syscall.Unmount(p, syscall.MNT_DETACH)
		}
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	if s.Dir != "" {
		if err := os.RemoveAll(s.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		if err := os.Remove(stateFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func nsInode(path string) uint64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0
	}
	return st.Ino
}

// nodePids are the processes in the node's network namespace (its components, the shims, the
// host-network pods) and in the kubepods cgroups the node created (every container).
func nodePids(nsIno uint64, cgroups []string) []int {
	self := os.Getpid()
	seen := map[int]bool{}
	if nsIno != 0 {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == self {
				continue
			}
			if nsInode(fmt.Sprintf("/proc/%d/ns/net", pid)) == nsIno {
				seen[pid] = true
			}
		}
	}
	for _, c := range cgroups {
		_ = filepath.WalkDir(c, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(p)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && pid != self {
					seen[pid] = true
				}
			}
			return nil
		})
	}
	out := make([]int, 0, len(seen))
	for pid := range seen {
		out = append(out, pid)
	}
	sort.Ints(out)
	return out
}

// mountsUnder lists the mount points at or below dir, deepest last in mount order.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close() //nolint:errcheck // opened for reading
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out
}

func isMountPoint(p string) bool {
	for _, m := range mountsUnder(p) {
		if m == p {
			return true
		}
	}
	return false
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// unmountUnder detaches every mount below dir, newest first (a mount on top of another goes first).
func unmountUnder(dir string) error {
	for attempt := 0; attempt < 5; attempt++ {
		ms := mountsUnder(dir)
		if len(ms) == 0 {
			return nil
		}
		for i := len(ms) - 1; i >= 0; i-- {
			_ = syscall.Unmount(ms[i], syscall.MNT_DETACH)
		}
	}
	if ms := mountsUnder(dir); len(ms) > 0 {
		return fmt.Errorf("mounts left under %s: %v", dir, ms)
	}
	return nil
}

// removeCgroup removes a cgroup v1 directory tree, children first (rmdir is the only way).
func removeCgroup(root string) error {
	if !exists(root) {
		return nil
	}
	var dirs []string
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	var last error
	for attempt := 0; attempt < 20; attempt++ {
		last = nil
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := syscall.Rmdir(dirs[i]); err != nil && !errors.Is(err, syscall.ENOENT) {
				last = fmt.Errorf("removing cgroup %s: %w", dirs[i], err)
			}
		}
		if last == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return last
}

func removeLinksInto(dir, target string) {
	if target == "" {
		return
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if l, err := os.Readlink(p); err == nil && strings.HasPrefix(l, target+"/") {
			_ = os.Remove(p)
		}
	}
}
