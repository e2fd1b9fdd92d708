package cli

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"wasme.io/wasme/internal/testing/registry"
	"wasme.io/wasme/internal/testing/wasmbuild"
	"wasme.io/wasme/internal/wasmhost"
	"wasme.io/wasme/pkg/wasmimage"
)

func customHeaderFile(tb testing.TB) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "custom-header.wasm")
	if err := os.WriteFile(path, wasmbuild.ExampleT(tb, "custom-header"), 0o644); err != nil {
		tb.Fatal(err)
	}
	return path
}

func upstream(tb testing.TB) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream", "yes")
		_, _ = io.WriteString(w, "details of "+r.URL.Path)
	}))
	tb.Cleanup(srv.Close)
	return srv
}

// startRun runs `wasme run` as a user would and returns the address it prints.
func startRun(t *testing.T, args ...string) (addr string, stop func() (string, error)) {
	t.Helper()
	addr, stop, _ = startRunLine(t, args...)
	return addr, stop
}

// startRunLine is startRun, also returning the first line wasme run printed.
func startRunLine(t *testing.T, args ...string) (addr string, stop func() (string, error), first string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		cmd := NewRootCmd(streams{out: pw, errOut: io.Discard})
		cmd.SetArgs(append([]string{"run"}, args...))
		err := cmd.ExecuteContext(ctx)
		_ = pw.Close() // never fails
		errc <- err
	}()
	br := bufio.NewReader(pr)
	line, err := br.ReadString('\n')
	if err != nil {
		cancel()
		t.Fatalf("wasme run printed nothing: %v (command error: %v)", err, <-errc)
	}
	const prefix = "Listening on http://"
	if !strings.HasPrefix(line, prefix) {
		cancel()
		t.Fatalf("first line %q does not say where it listens", line)
	}
	addr = strings.Fields(strings.TrimPrefix(line, prefix))[0]
	addr = strings.TrimSuffix(addr, ",")
	return addr, func() (string, error) {
		cancel()
		rest, _ := io.ReadAll(br)
		return string(rest), <-errc
	}, line
}

func TestRunCustomHeader(t *testing.T) {
	file := customHeaderFile(t)
	up := upstream(t)
	tests := []struct {
		name       string
		args       []string
		wantHeader string
		wantValue  string
		absent     string
	}{
		{name: "default adds hello", wantHeader: "hello", wantValue: "world!"},
		{name: "root id of the seed", args: []string{"--root-id", "add_header"}, wantHeader: "hello", wantValue: "world!"},
		{name: "config picks another header", args: []string{"--config", `{"name":"x-a","value":"b"}`}, wantHeader: "x-a", wantValue: "b", absent: "hello"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{file, "--upstream", up.URL, "--listen", "127.0.0.1:0"}, tc.args...)
			addr, stop := startRun(t, args...)
			// curl -I
			resp, err := http.Head("http://" + addr + "/details/123")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("status %d", resp.StatusCode)
			}
			if got := resp.Header.Get(tc.wantHeader); got != tc.wantValue {
				t.Errorf("%s: %q, want %q (headers %v)", tc.wantHeader, got, tc.wantValue, resp.Header)
			}
			if resp.Header.Get("X-Upstream") != "yes" {
				t.Errorf("the upstream's own header is missing: %v", resp.Header)
			}
			if tc.absent != "" && resp.Header.Get(tc.absent) != "" {
				t.Errorf("%s should not be set: %v", tc.absent, resp.Header)
			}
			// and a GET keeps the upstream body
			resp, err = http.Get("http://" + addr + "/details/123")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "details of /details/123" {
				t.Errorf("body %q", body)
			}
			out, err := stop()
			if err != nil {
				t.Fatalf("wasme run ended with %v", err)
			}
			if !strings.Contains(out, "Stopped.") {
				t.Errorf("output after stop: %q", out)
			}
		})
	}
}

// TestRunImage pulls the filter from a real registry; the image's root id is the default.
func TestRunImage(t *testing.T) {
	reg := registry.StartT(t, registry.Options{})
	ref := reg.Host + "/filters/custom-header:v0.1"
	_, err := wasmimage.Push(context.Background(), ref, wasmbuild.ExampleT(t, "custom-header"),
		wasmimage.RuntimeConfig{RootIDs: []string{"add_header"}}, wasmimage.WithPlainHTTP(true))
	if err != nil {
		t.Fatal(err)
	}
	up := upstream(t)
	addr, stop := startRun(t, ref, "--upstream", up.URL, "--listen", "127.0.0.1:0", "--plain-http", "--store", t.TempDir(),
		"--config", `{"name":"x-from-image","value":"1"}`)
	resp, err := http.Get("http://" + addr + "/details/123")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("X-From-Image") != "1" {
		t.Errorf("headers %v", resp.Header)
	}
	if _, err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestRunRejects(t *testing.T) {
	file := customHeaderFile(t)
	up := upstream(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"bad config", []string{file, "--upstream", up.URL, "--config", "{not json"}, "rejected its configuration"},
		{"unknown root id", []string{file, "--upstream", up.URL, "--root-id", "nope"}, `no root context named "nope"`},
		{"not a url", []string{file, "--upstream", "localhost"}, "want an http:// or https:// URL"},
		{"missing file", []string{filepath.Join(t.TempDir(), "x.wasm"), "--upstream", up.URL}, "no such file"},
		{"bad log level", []string{file, "--upstream", up.URL, "--log-level", "loud"}, "--log-level"},
		{"neither file nor image", []string{"no such thing", "--upstream", up.URL}, "is not a file, nor an image reference"},
		{"never pull, not in the store", []string{"registry.example.com/f:v9", "--upstream", up.URL, "--pull", "never", "--store", t.TempDir()}, "not in the local store (wasme list shows what it holds) (--pull never)"},
		{"bad pull policy", []string{"registry.example.com/f:v9", "--upstream", up.URL, "--pull", "sometimes"}, "--pull \"sometimes\""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := NewRootCmd(streams{out: io.Discard, errOut: io.Discard})
			cmd.SetArgs(append([]string{"run", "--listen", "127.0.0.1:0"}, tc.args...))
			err := cmd.ExecuteContext(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// BenchmarkFilterOverhead compares `wasme run`'s reverse proxy with the custom-header filter
// against the same reverse proxy without any filter.
func BenchmarkFilterOverhead(b *testing.B) {
	up := upstream(b)
	module := wasmbuild.ExampleT(b, "custom-header")
	log := slog.New(slog.DiscardHandler)
	o := runOptions{upstream: up.URL, callTimeout: wasmhost.DefaultCallTimeout, memoryLimit: "128Mi", rootID: "add_header"}
	filtered, p, err := newRunHandler(context.Background(), module, "custom-header", o, log, wasmhost.LogInfo)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close(context.Background())
	up2, _ := parseUpstream(up.URL)
	b.Run("no-filter", func(b *testing.B) { benchProxy(b, newReverseProxy(up2, log)) })
	b.Run("custom-header", func(b *testing.B) { benchProxy(b, filtered) })
}

func benchProxy(b *testing.B, h http.Handler) {
	front := httptest.NewServer(h)
	defer front.Close()
	client := front.Client()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		resp, err := client.Get(front.URL + "/details/123")
		if err != nil {
			b.Fatal(err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil {
			b.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
}
