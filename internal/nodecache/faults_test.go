package nodecache

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	eventsv1 "k8s.io/api/events/v1"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/cacheprotocol"
)

// fullDisk wraps a temp file and fails every write with ENOSPC while full is set.
type fullDisk struct {
	tempFile
	full *atomic.Bool
}

func (f fullDisk) Write(p []byte) (int, error) {
	if f.full.Load() {
		return 0, &fs.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
	}
	return f.tempFile.Write(p)
}

// TestFaults injects one fault at a time between the module source and the node, checks that
// the node reports Failed with a clear message and that nothing is visible under the final
// name, then removes the fault and checks that the node recovers by itself.
func TestFaults(t *testing.T) {
	tests := []struct {
		name string
		// inject starts the fault and returns what ends it (nil: it does not end).
		inject      func(t *testing.T, op *operator, full *atomic.Bool) (heal func())
		adjust      func(*Options)
		wantMessage string
	}{
		{
			name: "source down, then back",
			inject: func(t *testing.T, op *operator, _ *atomic.Bool) func() {
				op.setFault(func(w http.ResponseWriter, r *http.Request) bool {
					http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
					return true
				})
				return func() { op.setFault(nil) }
			},
			wantMessage: "503 Service Unavailable",
		},
		{
			name: "bytes that do not match the digest",
			inject: func(t *testing.T, op *operator, _ *atomic.Bool) func() {
				op.setFault(func(w http.ResponseWriter, r *http.Request) bool {
					body := wasmModule("tampered")
					body[len(body)-1] ^= 0xff
					_, _ = w.Write(body)
					return true
				})
				return func() { op.setFault(nil) }
			},
			wantMessage: "module bytes do not match the digest",
		},
		{
			name: "a token of another ServiceAccount",
			inject: func(t *testing.T, op *operator, _ *atomic.Bool) func() {
				good, err := os.ReadFile(op.tokenFile)
				if err != nil {
					t.Fatal(err)
				}
				writeToken(t, op.tokenFile, serviceAccountToken(t, op.ns, "intruder"))
				return func() { writeToken(t, op.tokenFile, string(good)) }
			},
			wantMessage: "403 Forbidden",
		},
		{
			name: "no valid token",
			inject: func(t *testing.T, op *operator, _ *atomic.Bool) func() {
				good, err := os.ReadFile(op.tokenFile)
				if err != nil {
					t.Fatal(err)
				}
				writeToken(t, op.tokenFile, "not-a-token")
				return func() { writeToken(t, op.tokenFile, string(good)) }
			},
			wantMessage: "401 Unauthorized",
		},
		{
			name: "a token of the API server's audience (a pod's default token)",
			inject: func(t *testing.T, op *operator, _ *atomic.Bool) func() {
				good, err := os.ReadFile(op.tokenFile)
				if err != nil {
					t.Fatal(err)
				}
				_, apiToken, err := env.ServiceAccountConfig(context.Background(), op.ns, "wasme-cache")
				if err != nil {
					t.Fatal(err)
				}
				writeToken(t, op.tokenFile, apiToken)
				return func() { writeToken(t, op.tokenFile, string(good)) }
			},
			wantMessage: "401 Unauthorized",
		},
		{
			name: "a module server certificate of another CA",
			inject: func(t *testing.T, op *operator, _ *atomic.Bool) func() {
				good, err := os.ReadFile(op.caFile)
				if err != nil {
					t.Fatal(err)
				}
				writeToken(t, op.caFile, string(servingTLS(t).CAPEM))
				// The daemon reads the CA file again when the kubelet updates it.
				return func() { writeToken(t, op.caFile, string(good)) }
			},
			wantMessage: "the module server's certificate is not signed by the CA in",
		},
		{
			name: "disk full",
			inject: func(t *testing.T, op *operator, full *atomic.Bool) func() {
				full.Store(true)
				return func() { full.Store(false) }
			},
			wantMessage: "no space left on device",
		},
		{
			name:        "module larger than the limit",
			inject:      func(*testing.T, *operator, *atomic.Bool) func() { return nil },
			adjust:      func(o *Options) { o.MaxModuleBytes = 100 },
			wantMessage: "module larger than the limit: more than 100 bytes",
		},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			op := startOperator(t)
			mod := wasmModule("fault " + tc.name)
			h := hexOf(mod)
			op.put(t, mod)
			var full atomic.Bool
			heal := tc.inject(t, op, &full)
			dir := t.TempDir()
			nodeName := "fault-" + string(rune('a'+i))
			n := startNode(t, op, nodeName, dir, tc.adjust, func(s *Store) {
				create := s.createTemp
				s.createTemp = func(dir, pattern string) (tempFile, error) {
					f, err := create(dir, pattern)
					if err != nil {
						return nil, err
					}
					return fullDisk{tempFile: f, full: &full}, nil
				}
			})
			filterDeployment(t, op.ns, "fault", mod)

			msg := waitModule(t, nodeName, h, wasmev1.ModuleFailed)
			if !strings.Contains(msg, tc.wantMessage) {
				t.Errorf("Failed message %q, want it to contain %q", msg, tc.wantMessage)
			}
			// Let a few retries happen, then look: nothing partial or unverified anywhere.
			waitFor(t, "a retry", func() (bool, string) {
				v := metricValue(t, n, "wasme_cache_fetch_duration_seconds_count")
				return v != "" && v != "1", v
			})
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				t.Errorf("the directory holds %s while the module is Failed", e.Name())
			}
			if code, _, _ := get(t, "GET", "http://"+n.d.Addr()+"/sha256/"+h, nil); code != http.StatusNotFound {
				t.Errorf("the daemon serves a Failed module: status %d", code)
			}
			if heal == nil {
				return
			}
			// Retries do not add Events: one for the transition to Failed.
			waitFor(t, "a ModuleFailed event", func() (bool, string) {
				n := moduleEvents(t, nodeName, "ModuleFailed")
				return n >= 1, fmt.Sprint(n, " events")
			})
			attempts, _ := strconv.Atoi(metricValue(t, n, "wasme_cache_fetch_duration_seconds_count"))
			waitFor(t, "three more attempts", func() (bool, string) {
				v, _ := strconv.Atoi(metricValue(t, n, "wasme_cache_fetch_duration_seconds_count"))
				return v >= attempts+3, fmt.Sprint(v)
			})
			if got := moduleEvents(t, nodeName, "ModuleFailed"); got != 1 {
				t.Errorf("%d ModuleFailed events (series included) after several failed attempts, want 1", got)
			}
			before := op.fetchCount(nodeName, h)
			heal()
			waitModule(t, nodeName, h, wasmev1.ModuleReady)
			data, err := os.ReadFile(filepath.Join(dir, h))
			if err != nil || !bytes.Equal(data, mod) {
				t.Errorf("after recovery: %v, module intact %v", err, bytes.Equal(data, mod))
			}
			// A full disk wastes downloads, the other faults fail before the body; once healed,
			// exactly one more download completes the module.
			if got := op.fetchCount(nodeName, h) - before; got != 1 {
				t.Errorf("%d successful downloads after the fault ended, want 1", got)
			}
			waitFor(t, "a ModuleReady event", func() (bool, string) {
				n := moduleEvents(t, nodeName, "ModuleReady")
				return n == 1, fmt.Sprint(n, " events")
			})
		})
	}
}

// TestRestart starts a daemon on a directory left behind by a crash: a temp file of an
// interrupted download, a corrupted module, a valid module no FilterDeployment names, and a
// file that is not ours.
func TestRestart(t *testing.T) {
	op := startOperator(t)
	needed, old := wasmModule("needed"), wasmModule("old")
	op.put(t, needed)
	filterDeployment(t, op.ns, "restart", needed)

	dir := t.TempDir()
	temp := filepath.Join(dir, tempPrefix+hexOf(needed)+"-12345")
	corrupt := append([]byte(nil), needed...)
	corrupt[100] ^= 0x01
	for name, data := range map[string][]byte{
		temp:                              needed[:len(needed)/2],
		filepath.Join(dir, hexOf(needed)): corrupt,
		filepath.Join(dir, hexOf(old)):    old,
		filepath.Join(dir, "notes.txt"):   []byte("an administrator's file"),
	} {
		if err := os.WriteFile(name, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	n := startNode(t, op, "restart-1", dir, func(o *Options) { o.GracePeriod = time.Hour }, nil)
	waitModule(t, n.name, hexOf(needed), wasmev1.ModuleReady)
	waitModule(t, n.name, hexOf(old), wasmev1.ModuleReady)

	if _, err := os.Stat(temp); !os.IsNotExist(err) {
		t.Errorf("the leftover temp file is still there: %v", err)
	}
	if data, _ := os.ReadFile(filepath.Join(dir, hexOf(needed))); !bytes.Equal(data, needed) {
		t.Error("the corrupt module was not replaced by the verified one")
	}
	if got := op.fetchCount(n.name, hexOf(needed)); got != 1 {
		t.Errorf("the corrupt module was fetched %d times, want 1", got)
	}
	if got := op.fetchCount(n.name, hexOf(old)); got != 0 {
		t.Errorf("the valid old module was fetched %d times, want 0", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "notes.txt")); err != nil {
		t.Errorf("a file that is not a module was touched: %v", err)
	}
	for sample, want := range map[string]string{
		`wasme_cache_removals_total{reason="corrupt"}`:   "1",
		`wasme_cache_removals_total{reason="temp_file"}`: "1",
		"wasme_cache_modules":                            "2",
	} {
		if got := metricValue(t, n, sample); got != want {
			t.Errorf("%s = %q, want %q", sample, got, want)
		}
	}
}

// TestSizeCap fills a directory over its cap: the least recently used module no
// FilterDeployment names goes first, and modules in use are never evicted.
func TestSizeCap(t *testing.T) {
	op := startOperator(t)
	a, b, c, d := wasmModule("cap a"), wasmModule("cap b"), wasmModule("cap c"), wasmModule("cap d")
	for _, m := range [][]byte{a, b, d} {
		op.put(t, m)
	}
	size := int64(len(a))
	dir := t.TempDir()
	for _, m := range [][]byte{b, c} {
		if err := os.WriteFile(filepath.Join(dir, hexOf(m)), m, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Hold the fetch of a until b has been served, so that c is the least recently used.
	release := make(chan struct{})
	op.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if h, _ := cacheprotocol.DigestOf(r.URL.Path); h == hexOf(a) {
			<-release
		}
		return false
	})
	n := startNode(t, op, "cap-1", dir, func(o *Options) {
		o.GracePeriod = time.Hour
		o.MaxBytes = 2*size + size/2
	}, nil)
	filterDeployment(t, op.ns, "cap-a", a)
	waitModule(t, n.name, hexOf(b), wasmev1.ModuleReady)
	if code, _, _ := get(t, "GET", "http://"+n.d.Addr()+"/"+hexOf(b), nil); code != 200 {
		t.Fatalf("serving b: %d", code)
	}
	close(release)
	waitModule(t, n.name, hexOf(a), wasmev1.ModuleReady)
	waitGone(t, n.name, hexOf(c))
	for _, m := range [][]byte{a, b} {
		if _, err := os.Stat(filepath.Join(dir, hexOf(m))); err != nil {
			t.Errorf("module evicted instead of the least recently used one: %v", err)
		}
	}
	if got := metricValue(t, n, `wasme_cache_removals_total{reason="size_cap"}`); got != "1" {
		t.Errorf("size_cap removals = %q, want 1", got)
	}

	// Over the cap with every module in use: nothing is evicted.
	filterDeployment(t, op.ns, "cap-b", b)
	filterDeployment(t, op.ns, "cap-d", d)
	for _, m := range [][]byte{a, b, d} {
		waitModule(t, n.name, hexOf(m), wasmev1.ModuleReady)
	}
	if got := metricValue(t, n, "wasme_cache_bytes"); got != fmt.Sprint(3*size) {
		t.Errorf("wasme_cache_bytes = %q, want %d (over the cap, all in use)", got, 3*size)
	}
}

// moduleEvents counts the Events with reason about NodeCache/<nodeName>.
func moduleEvents(t *testing.T, nodeName, reason string) int {
	t.Helper()
	var list eventsv1.EventList
	if err := env.Client.List(context.Background(), &list); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range list.Items {
		if e.Regarding.Kind == "NodeCache" && e.Regarding.Name == nodeName && e.Reason == reason {
			n++
			if e.Series != nil {
				// The recorder folds repeats of one event into a series; each counts.
				n += int(e.Series.Count) - 1
			}
		}
	}
	return n
}
