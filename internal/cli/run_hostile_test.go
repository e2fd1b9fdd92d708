package cli

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"wasme.io/wasme/internal/testing/wasmbuild"
)

// TestRunHostileModules: `wasme run` on the hostile modules of issue 11 (rows 1-3) neither
// panics nor hangs: the filter is refused at start with the reason, and a filter that breaks a
// host limit while serving gets 503s (or, with --fail-open, the upstream's answer) while the
// process keeps serving.
func TestRunHostileModules(t *testing.T) {
	up := upstream(t)
	write := func(t *testing.T, module []byte) string {
		path := filepath.Join(t.TempDir(), "hostile.wasm")
		if err := os.WriteFile(path, module, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	refused := []struct {
		name    string
		module  []byte
		wantErr string
	}{
		{"no memory, trapping tick", wasmbuild.NoMemoryTickTrap(), `no memory`},
		{"no memory, host call", wasmbuild.NoMemoryHostCall(), `no memory`},
		{"start section loops", wasmbuild.StartLoop(), "start function did not return within 10s"},
		{"shared data flood", wasmbuild.SharedDataFlood(1024, 1024), "host limit on shared data (16 MiB per VM)"},
		{"huge table", wasmbuild.HugeTable(1 << 27), "host limit on table size"},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			// A deadline for the test, not a timing assertion: a hang fails here instead of
			// at the test binary's timeout.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := NewRootCmd(streams{out: io.Discard, errOut: io.Discard})
			cmd.SetArgs([]string{"run", write(t, tc.module), "--upstream", up.URL, "--listen", "127.0.0.1:0"})
			err := cmd.ExecuteContext(ctx)
			if ctx.Err() != nil {
				t.Fatal("wasme run did not return")
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("wasme run: %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}

	for _, failOpen := range []bool{false, true} {
		name, want := "fail closed", http.StatusServiceUnavailable
		args := []string{write(t, wasmbuild.SharedDataFloodOnRequest(1024, 1024)), "--upstream", up.URL, "--listen", "127.0.0.1:0"}
		if failOpen {
			name, want = "fail open", http.StatusOK
			args = append(args, "--fail-open")
		}
		t.Run("shared data flood while serving, "+name, func(t *testing.T) {
			addr, stop := startRun(t, args...)
			for range 3 { // each request breaks an instance; the next one gets a fresh one
				resp, err := http.Get("http://" + addr + "/details/1")
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != want {
					t.Fatalf("status %d, want %d", resp.StatusCode, want)
				}
			}
			if _, err := stop(); err != nil {
				t.Fatalf("wasme run: %v", err)
			}
		})
	}
}
