package node_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"wasme.io/wasme/internal/testing/node"
)

// hostState is what of the host a node may change: it is compared before and after.
type hostState struct {
	mounts, netns, links, routes, iptables, sysctls, cgroups, paths []string
}

var watchedSysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/ipv4/ip_forward",
	"net/netfilter/nf_conntrack_max", "net/bridge/bridge-nf-call-iptables",
}

var watchedPaths = []string{
	"/run/containerd", "/var/lib/cni", "/var/log/containers", "/var/log/pods", "/run/netns",
	"/etc/cni", "/opt/cni", "/var/lib/kubelet", "/var/lib/containerd", "/var/local/lib/wasme-cache",
}

func lines(name string, args ...string) ([]string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	var ls []string
	for _, l := range strings.Split(string(out), "\n") {
		// iptables-save's comment lines carry a time stamp.
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			ls = append(ls, l)
		}
	}
	sort.Strings(ls)
	return ls, nil
}

func snapshotHost() (*hostState, error) {
	var s hostState
	var err error
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) > 4 {
			s.mounts = append(s.mounts, fs[4])
		}
	}
	_ = f.Close() // read to the end already
	sort.Strings(s.mounts)
	if s.netns, err = lines("ip", "netns", "list"); err != nil {
		return nil, err
	}
	if s.links, err = lines("ip", "-o", "link", "show"); err != nil {
		return nil, err
	}
	for i, l := range s.links {
		// Counters and link state vary; the name and kind of each link are what matter.
		if fs := strings.Fields(l); len(fs) > 1 {
			s.links[i] = fs[1]
		}
	}
	if s.routes, err = lines("ip", "route", "show", "table", "all"); err != nil {
		return nil, err
	}
	if s.iptables, err = lines("iptables-save"); err != nil {
		return nil, err
	}
	for _, k := range watchedSysctls {
		b, err := os.ReadFile("/proc/sys/" + k)
		s.sysctls = append(s.sysctls, fmt.Sprintf("%s=%s(%v)", k, strings.TrimSpace(string(b)), err != nil))
	}
	cgs, _ := filepath.Glob("/sys/fs/cgroup/*/kubepods")
	s.cgroups = append(cgs, globs("/sys/fs/cgroup/kubepods")...)
	for _, p := range watchedPaths {
		if _, err := os.Lstat(p); err == nil {
			s.paths = append(s.paths, p)
		}
	}
	return &s, nil
}

func globs(p string) []string { m, _ := filepath.Glob(p); return m }

// nodeProcesses are processes whose command line names the node's directory (every
// component and shim does), or that run in a kubepods cgroup (every container).
func nodeProcesses(dir string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		// A zombie is dead already, waiting for its parent (init) to reap it.
		if st, _ := os.ReadFile("/proc/" + e.Name() + "/stat"); strings.Contains(string(st), ") Z ") {
			continue
		}
		cmd, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		cg, _ := os.ReadFile("/proc/" + e.Name() + "/cgroup")
		if (dir != "" && strings.Contains(string(cmd), dir)) || strings.Contains(string(cg), "/kubepods") {
			out = append(out, e.Name()+" "+strings.ReplaceAll(string(cmd), "\x00", " "))
		}
	}
	return out
}

func diff(what string, a, b []string) string {
	in := map[string]int{}
	for _, x := range a {
		in[x]++
	}
	// Only what is new counts: Start may have removed a dead test's leftovers.
	var added []string
	for _, x := range b {
		if in[x] > 0 {
			in[x]--
		} else {
			added = append(added, x)
		}
	}
	if len(added) == 0 {
		return ""
	}
	return fmt.Sprintf("\n%s: left behind %q", what, added)
}

// TestTeardown stops the node the other tests used (it runs last) and finds the host as it
// was: no process, mount, network namespace, link, route, iptables rule, kubepods cgroup or
// host directory of the node left, and the sysctls kubelet changed restored.
func TestTeardown(t *testing.T) {
	n := sharedNode(t)
	// The node has run pods (volumes mounted, cgroups, a pod netns, Service rules) when the
	// other tests ran; alone, run one so there is something to clean up.
	if detailsImage == "" {
		TestPodReady(t)
	}
	dir := n.Dir
	if err := n.Stop(); err != nil {
		t.Fatalf("stopping the node: %v", err)
	}
	shared = nil
	// Another test binary's node may start the moment ours released the lock; look at the host
	// while no node can run.
	l, err := node.Lock()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	after, err := snapshotHost()
	if err != nil {
		t.Fatal(err)
	}
	if p := leftovers(before, after, dir); p != "" {
		t.Fatalf("the node left things behind:%s", p)
	}
}

// leftovers is what after has of a node that before had not, and the node's processes and
// directory; empty when nothing is left.
func leftovers(before, after *hostState, dir string) string {
	var problems strings.Builder
	problems.WriteString(diff("mounts", before.mounts, after.mounts))
	problems.WriteString(diff("network namespaces", before.netns, after.netns))
	problems.WriteString(diff("links", before.links, after.links))
	problems.WriteString(diff("routes", before.routes, after.routes))
	problems.WriteString(diff("iptables rules", before.iptables, after.iptables))
	problems.WriteString(diff("sysctls", before.sysctls, after.sysctls))
	problems.WriteString(diff("kubepods cgroups", before.cgroups, after.cgroups))
	problems.WriteString(diff("host paths", before.paths, after.paths))
	if ps := nodeProcesses(dir); len(ps) > 0 {
		fmt.Fprintf(&problems, "\nprocesses left: %q", ps)
	}
	if _, err := os.Stat(dir); err == nil {
		fmt.Fprintf(&problems, "\nthe node's directory %s is still there", dir)
	}
	return problems.String()
}
