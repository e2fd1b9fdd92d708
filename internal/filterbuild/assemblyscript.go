// Package filterbuild compiles filter projects with their language's own toolchain, without a
// container runtime. wasme build and the tests use the same code.
package filterbuild

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ErrNoNPM is returned when npm is not on PATH.
var ErrNoNPM = errors.New("npm is not on PATH: install Node.js and npm (e.g. apt-get install nodejs npm), or build the .wasm yourself and use wasme build precompiled")

// AssemblyScriptOutput is where the original wasme's AssemblyScript projects put the
// optimized module (its builder image copied build/optimized.wasm).
const AssemblyScriptOutput = "build/optimized.wasm"

// AssemblyScript builds the npm project in dir the way the original wasme's builder image
// did, with the npm on PATH: install the project's pinned dependencies (the assemblyscript
// compiler and @solo-io/proxy-runtime), run its asbuild:optimized script (or asbuild), and copy
// build/optimized.wasm to dst. The tools' output goes to log. npm's own cache is used
// (npm_config_cache in env, if set, points it elsewhere). A compiler error is returned with the
// compiler's message.
func AssemblyScript(ctx context.Context, dir, dst string, log io.Writer, env ...string) error {
	npm, err := exec.LookPath("npm")
	if err != nil {
		return ErrNoNPM
	}
	pkg, err := os.ReadFile(filepath.Join(dir, "package.json"))
	if err != nil {
		return fmt.Errorf("%s is not an npm project: %w", dir, err)
	}
	var manifest struct {
		Scripts map[string]string `json:"scripts"`
	}
	if err := json.Unmarshal(pkg, &manifest); err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(dir, "package.json"), err)
	}
	script := ""
	for _, s := range []string{"asbuild:optimized", "asbuild"} {
		if manifest.Scripts[s] != "" {
			script = s
			break
		}
	}
	if script == "" {
		return fmt.Errorf("%s has no asbuild:optimized or asbuild script (the wasme template's scripts write %s)", filepath.Join(dir, "package.json"), AssemblyScriptOutput)
	}
	// npm ci installs exactly the lockfile; without one, npm install resolves package.json.
	install := []string{"install"}
	if _, err := os.Stat(filepath.Join(dir, "package-lock.json")); err == nil {
		install = []string{"ci"}
	}
	install = append(install, "--no-audit", "--no-fund", "--prefer-offline")
	if _, err := runNPM(ctx, npm, dir, log, env, install...); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(dir, AssemblyScriptOutput)) // never pick up an old build
	if out, err := runNPM(ctx, npm, dir, log, env, "run", script); err != nil {
		if msg := compilerError(out); msg != "" {
			return fmt.Errorf("the AssemblyScript compiler failed: %s", msg)
		}
		return err
	}
	b, err := os.ReadFile(filepath.Join(dir, AssemblyScriptOutput))
	if err != nil {
		return fmt.Errorf("npm run %s wrote no %s: %w", script, AssemblyScriptOutput, err)
	}
	return os.WriteFile(dst, b, 0o644)
}

// runNPM runs npm, streaming its output to log and keeping the last 64 KiB of it.
func runNPM(ctx context.Context, npm, dir string, log io.Writer, env []string, args ...string) ([]byte, error) {
	tail := &tailBuffer{max: 64 << 10}
	c := exec.CommandContext(ctx, npm, args...)
	c.Dir = dir
	c.Env = append(os.Environ(), env...)
	c.Stdout = io.MultiWriter(log, tail)
	c.Stderr = c.Stdout
	if err := c.Run(); err != nil {
		if ctx.Err() != nil {
			return tail.Bytes(), ctx.Err()
		}
		return tail.Bytes(), fmt.Errorf("npm %s failed (%w): %s", strings.Join(args, " "), err, lastLine(tail.Bytes()))
	}
	return tail.Bytes(), nil
}

// compilerError picks asc's error lines ("ERROR TS2304: Cannot find name 'x'." and the
// location line after it) from its output.
func compilerError(out []byte) string {
	var msgs []string
	lines := strings.Split(string(out), "\n")
	for i, l := range lines {
		l = strings.TrimSpace(l)
		if !strings.HasPrefix(l, "ERROR ") { // "ERROR TS2304: ...", not the closing "ERROR: Compile error"
			continue
		}
		msg := l
		for _, next := range lines[i+1 : min(i+6, len(lines))] {
			if next = strings.TrimSpace(next); strings.HasPrefix(next, "in ") {
				msg += " (" + next + ")"
				break
			}
		}
		msgs = append(msgs, msg)
		if len(msgs) == 3 {
			break
		}
	}
	return strings.Join(msgs, "; ")
}

func lastLine(b []byte) string {
	var last string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			last = l
		}
	}
	return last
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) Bytes() []byte { return t.buf }
