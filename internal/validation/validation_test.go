package validation_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"wasme.io/wasme/internal/testing/wasmbuild"
	"wasme.io/wasme/internal/validation"
)

// TestMain makes this test binary the validation child when started with the verb, as the
// wasme binary is in production: the tests run the child code path for real.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == validation.Verb {
		os.Exit(validation.Child(os.Stdin, os.Stdout))
	}
	if len(os.Args) > 2 && os.Args[1] == "report-child" {
		reportChild(os.Args[2])
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestChild(t *testing.T) {
	tests := []struct {
		name      string
		module    []byte
		limits    validation.Limits
		wantLimit string // "" and wantErr "": accepted
		wantErr   string
	}{
		{name: "minimal filter", module: wasmbuild.Minimal()},
		{name: "no memory, trapping tick", module: wasmbuild.NoMemoryTickTrap(), wantErr: `exports no memory named "memory"`},
		{name: "no memory, host call", module: wasmbuild.NoMemoryHostCall(), wantErr: `exports no memory named "memory"`},
		{name: "start section loops", module: wasmbuild.StartLoop(), limits: validation.Limits{Timeout: 2 * time.Second},
			wantLimit: "time", wantErr: "2s"},
		{name: "shared data flood", module: wasmbuild.SharedDataFlood(1024, 1024),
			wantLimit: "shared data (16 MiB per VM)", wantErr: "exceeded the host limit on shared data"},
		{name: "huge table", module: wasmbuild.HugeTable(1 << 27),
			wantLimit: "table size (1048576 entries)", wantErr: "table 0 declares 134217728 entries"},
		// The guest memory cap lifted: the address-space limit of the child stops it.
		{name: "memory hog past the address-space limit", module: wasmbuild.MemoryHog(16000),
			limits:    validation.Limits{AddressSpace: 128 << 20, GuestMemory: 4 << 30},
			wantLimit: "memory", wantErr: "validation memory limit of 128 MiB"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := validation.NewRunner("", tc.limits, nil)
			if err != nil {
				t.Fatal(err)
			}
			res := r.Run(context.Background(), tc.module, "", nil)
			t.Logf("%v, peak RSS %d MiB: %v", res.Duration.Round(time.Millisecond), res.MaxRSS>>20, res.Err)
			switch {
			case tc.wantErr == "" && res.Err != nil:
				t.Fatalf("refused: %v", res.Err)
			case tc.wantErr != "" && res.Err == nil:
				t.Fatal("accepted")
			case tc.wantErr != "" && !strings.Contains(res.Err.Error(), tc.wantErr):
				t.Fatalf("error %q does not contain %q", res.Err, tc.wantErr)
			// A busy loop spends its wall-clock budget as CPU time: which limit trips first is
			// the machine's choice, and both stop it.
			case res.Limit != tc.wantLimit && !(tc.wantLimit == "time" && res.Limit == "cpu"):
				t.Fatalf("limit %q, want %q", res.Limit, tc.wantLimit)
			}
			// The child's resident memory stays within its address-space limit (beyond the few
			// MiB a Go process has mapped at start).
			if limit := r.Limits.AddressSpace + 64<<20; res.MaxRSS == 0 || res.MaxRSS > limit {
				t.Fatalf("child peak RSS %d bytes, want (0, %d]", res.MaxRSS, limit)
			}
		})
	}
}

// reportChild records what a validation child starts with (after the child's own first step).
func reportChild(dir string) {
	validation.CloseInheritedFiles()
	// The test reading these fails when one is missing.
	_ = os.WriteFile(filepath.Join(dir, "env"), []byte(strings.Join(os.Environ(), "\n")), 0o644)
	var fds []string
	entries, _ := os.ReadDir("/proc/self/fd")
	for _, e := range entries {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil {
			fds = append(fds, e.Name()+" -> "+target)
		}
	}
	_ = os.WriteFile(filepath.Join(dir, "fds"), []byte(strings.Join(fds, "\n")), 0o644)
}

// TestChildEnvironment: the child gets none of the operator's environment (ServiceAccount
// token paths, cluster addresses, credentials in variables) and no open file but its pipes
// and what the Go runtime opens itself. A script in place of the executable passes the
// child's start to this test binary, which records it.
func TestChildEnvironment(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
	t.Setenv("WASME_SECRET", "s3cret")
	// A descriptor without close-on-exec, as an operator may inherit one: exec passes it on.
	leak, err := syscall.Open(filepath.Join(t.TempDir(), "..", ""), syscall.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = syscall.Close(leak) }()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "child")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexec "+self+" report-child "+dir+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	r, err := validation.NewRunner(script, validation.Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	res := r.Run(context.Background(), wasmbuild.Minimal(), "", nil)
	if res.Err == nil || !strings.Contains(res.Err.Error(), "without a verdict") {
		t.Fatalf("a child that answers nothing: %v", res.Err)
	}
	env, err := os.ReadFile(filepath.Join(dir, "env"))
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range strings.Split(string(env), "\n") {
		if strings.HasPrefix(kv, "KUBERNETES_") || strings.Contains(kv, "s3cret") || strings.HasPrefix(kv, "HOME=") {
			t.Fatalf("the child sees %q", kv)
		}
	}
	fds, err := os.ReadFile(filepath.Join(dir, "fds"))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range strings.Split(string(fds), "\n") {
		name, target, _ := strings.Cut(fd, " -> ")
		switch {
		case name == "0" || name == "1" || name == "2":
		case strings.HasPrefix(target, "anon_inode:"), strings.HasPrefix(target, "/proc/"), strings.HasPrefix(target, "/sys/fs/cgroup/"):
			// the runtime's epoll, event and CPU-limit descriptors; ReadDir's own
		default:
			t.Fatalf("the child holds %s; all: %s", fd, fds)
		}
	}
}
