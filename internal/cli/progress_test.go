package cli

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"wasme.io/wasme/internal/testing/registry"
	"wasme.io/wasme/internal/testing/wasmbuild"
)

// A module of a few MiB pushed to and pulled from a real registry: with --progress, stderr has
// one line per tenth moved, rising to 100%; without it (stderr is no terminal here) stderr
// stays empty, so scripts read only the result.
func TestPushPullProgress(t *testing.T) {
	isolate(t)
	reg := registry.StartT(t, registry.Options{})
	pad := make([]byte, 4<<20)
	_, _ = rand.Read(pad)
	file := filepath.Join(t.TempDir(), "big.wasm")
	if err := os.WriteFile(file, wasmbuild.WithCustomSection(wasmbuild.MinimalFilter(), "padding", pad), 0o644); err != nil {
		t.Fatal(err)
	}
	store := t.TempDir()
	ref := reg.Host + "/filters/big:v1"
	mustRun(t, "build", "precompiled", file, "-t", ref, "--store", store)

	checkLines := func(what, verb, stderr string) {
		t.Helper()
		line := regexp.MustCompile(`^` + verb + ` sha256:[0-9a-f]{12}: [0-9.]+ (B|KiB|MiB) of 4\.0 MiB \((\d+)%\)$`)
		lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
		last := -1
		for _, l := range lines {
			m := line.FindStringSubmatch(l)
			if m == nil {
				t.Fatalf("%s: stderr line %q is not a progress line", what, l)
			}
			pct, _ := strconv.Atoi(m[2])
			if pct <= last || pct%10 != 0 {
				t.Errorf("%s: %d%% after %d%%", what, pct, last)
			}
			last = pct
		}
		if len(lines) < 2 || last != 100 {
			t.Errorf("%s: %d lines ending at %d%%, want several ending at 100%%:\n%s", what, len(lines), last, stderr)
		}
	}

	out, errOut, code := wasme(t, "", "push", ref, "--plain-http", "--store", store, "--progress")
	if code != 0 || !strings.Contains(out, "Pushed ") {
		t.Fatalf("push --progress: exit %d\n%s%s", code, out, errOut)
	}
	checkLines("push", "pushing", errOut)

	out, errOut, code = wasme(t, "", "pull", ref, "--plain-http", "--store", t.TempDir(), "--progress", "-o", "json")
	if code != 0 || !strings.HasPrefix(out, "{") {
		t.Fatalf("pull --progress: exit %d\n%s%s", code, out, errOut)
	}
	checkLines("pull", "pulling", errOut)

	for _, args := range [][]string{
		{"pull", ref, "--plain-http", "--store", t.TempDir()},
		{"push", reg.Host + "/filters/big-compat:v1", "--layout", "compat", "--plain-http", "--store", store},
	} {
		if args[0] == "push" {
			mustRun(t, "tag", ref, args[1], "--store", store)
		}
		if _, errOut, code := wasme(t, "", args...); code != 0 || errOut != "" {
			t.Errorf("wasme %s: exit %d, stderr %q; want exit 0 and nothing on stderr", strings.Join(args, " "), code, errOut)
		}
	}
}
