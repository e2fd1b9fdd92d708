package nodecache

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/go-logr/logr"
	"k8s.io/client-go/tools/clientcmd"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/cacheprotocol"
)

// childEnv makes the test binary run one daemon instead of the tests, so that a test can
// SIGKILL a real process in the middle of a download.
const childEnv = "WASME_NODECACHE_TEST_CHILD"

// runChild runs a daemon configured from the environment until SIGTERM.
func runChild() int {
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv("CHILD_KUBECONFIG"))
	if err != nil {
		return fail(err)
	}
	src, err := cacheprotocol.NewClient(cacheprotocol.ClientOptions{
		URL: os.Getenv("CHILD_OPERATOR_URL"), ServerName: cacheprotocol.ServerName("wasme"),
		TokenFile: os.Getenv("CHILD_TOKEN_FILE"), CAFile: os.Getenv("CHILD_CA_FILE"), NodeName: os.Getenv("CHILD_NODE"),
	})
	if err != nil {
		return fail(err)
	}
	d, err := New(Options{Dir: os.Getenv("CHILD_DIR"), NodeName: os.Getenv("CHILD_NODE"), Config: cfg, Source: src,
		Addr: "127.0.0.1:0", Log: logr.Discard()})
	if err != nil {
		return fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := d.Run(ctx); err != nil {
		return fail(err)
	}
	return 0
}

func fail(err error) int {
	_, _ = os.Stderr.WriteString("child daemon: " + err.Error() + "\n")
	return 1
}

// TestKilledDuringDownload SIGKILLs a daemon process while it is writing a module, checks that
// nothing is visible under the module's name, then restarts on the same directory: the
// leftover temp file is removed and the module completes.
func TestKilledDuringDownload(t *testing.T) {
	op := startOperator(t)
	mod := wasmModule("killed")
	h := hexOf(mod)
	op.put(t, mod)

	// The first download sends half the module and then stalls, as a slow link would.
	stalled := make(chan struct{})
	op.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasSuffix(r.URL.Path, h) {
			return false
		}
		w.Header().Set("Content-Length", itoa(len(mod)))
		_, _ = w.Write(mod[:len(mod)/2])
		w.(http.Flusher).Flush()
		select {
		case <-stalled:
		case <-r.Context().Done():
		}
		return true
	})
	t.Cleanup(func() { close(stalled) })

	dir := t.TempDir()
	const nodeName = "killed-1"
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1", "CHILD_KUBECONFIG="+env.Kubeconfig(t), "CHILD_DIR="+dir,
		"CHILD_NODE="+nodeName, "CHILD_OPERATOR_URL="+op.url, "CHILD_TOKEN_FILE="+op.tokenFile, "CHILD_CA_FILE="+op.caFile)
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	filterDeployment(t, op.ns, "killed", mod)

	var temp string
	waitFor(t, "the child to be writing the module", func() (bool, string) {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if fi, err := e.Info(); err == nil && strings.HasPrefix(e.Name(), tempPrefix) && fi.Size() > 0 {
				temp = e.Name()
				return true, ""
			}
		}
		return false, stderr.String()
	})
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != temp {
		t.Fatalf("after the kill the directory holds %v, want only the temp file %s", names(entries), temp)
	}

	op.setFault(nil)
	n := startNode(t, op, nodeName, dir, nil, nil)
	waitModule(t, nodeName, h, wasmev1.ModuleReady)
	entries, _ = os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != h {
		t.Errorf("after the restart the directory holds %v, want only %s", names(entries), h)
	}
	if data, _ := os.ReadFile(filepath.Join(dir, h)); !bytes.Equal(data, mod) {
		t.Error("the module on disk is not the module")
	}
	if got := metricValue(t, n, `wasme_cache_removals_total{reason="temp_file"}`); got != "1" {
		t.Errorf("temp files removed at start = %q, want 1", got)
	}
}

func names(entries []os.DirEntry) []string {
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func itoa(i int) string { return strconv.Itoa(i) }

// syncBuffer is the child's stderr, read by the test while the child writes it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
