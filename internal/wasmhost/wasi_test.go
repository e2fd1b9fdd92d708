package wasmhost

import (
	"context"
	"encoding/binary"
	"strings"
	"testing"
)

// TestWASI: one row per WASI function, each Envoy's answer (proxy-wasm-cpp-host
// src/exports.cc, the wasi_unstable_* functions), called on the probe's real memory.
func TestWASI(t *testing.T) {
	funcs := map[string]wasiFunc{}
	for _, f := range wasiFuncs() {
		funcs[f.name] = f
	}
	type row struct {
		fn    string
		args  func(e *abiEnv) []uint64
		want  uint32
		check func(t *testing.T, e *abiEnv)
	}
	iov := func(e *abiEnv, s string) uint64 {
		p, n := e.str(s)
		vec := binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, p), n)
		return uint64(e.put(vec))
	}
	zero := func(n int) func(*abiEnv) []uint64 { return func(*abiEnv) []uint64 { return make([]uint64, n) } }
	rows := map[string][]row{}
	add := func(name string, r row) { r.fn = name; rows[name] = append(rows[name], r) }
	add("fd_write", row{args: func(e *abiEnv) []uint64 { return []uint64{1, iov(e, "to stdout\n"), 1, uint64(e.ret)} }, want: errnoSuccess,
		check: func(t *testing.T, e *abiEnv) {
			if e.u32(e.ret) != 10 {
				t.Errorf("nwritten %d", e.u32(e.ret))
			}
		}})
	add("fd_write", row{args: func(e *abiEnv) []uint64 { return []uint64{3, iov(e, "x"), 1, uint64(e.ret)} }, want: errnoBadf})
	add("fd_write", row{args: func(e *abiEnv) []uint64 { return []uint64{2, uint64(bad), 1, uint64(e.ret)} }, want: errnoFault})
	add("fd_pwrite", row{args: func(e *abiEnv) []uint64 { return []uint64{2, iov(e, "err"), 1, 0, uint64(e.ret)} }, want: errnoSuccess})
	add("fd_pwrite", row{args: func(e *abiEnv) []uint64 { return []uint64{5, 0, 0, 0, uint64(e.ret)} }, want: errnoBadf})
	add("fd_read", row{args: zero(4), want: errnoNosys})
	add("fd_pread", row{args: zero(5), want: errnoNosys})
	add("fd_seek", row{args: zero(4), want: errnoSuccess})
	add("fd_close", row{args: zero(1), want: errnoSuccess})
	add("fd_fdstat_get", row{args: func(e *abiEnv) []uint64 { return []uint64{1, uint64(e.ret)} }, want: errnoSuccess,
		check: func(t *testing.T, e *abiEnv) {
			if b, _ := e.in.mod.Memory().Read(e.ret+8, 8); binary.LittleEndian.Uint64(b) != 64 {
				t.Errorf("rights %v, want FD_WRITE (64)", b)
			}
		}})
	add("fd_fdstat_get", row{args: func(e *abiEnv) []uint64 { return []uint64{0, uint64(e.ret)} }, want: errnoBadf})
	add("fd_fdstat_set_flags", row{args: zero(2), want: errnoNosys})
	for _, f := range []string{"fd_fdstat_set_rights", "fd_allocate", "fd_datasync", "fd_filestat_set_size", "fd_filestat_set_times", "fd_sync"} {
		n := len(funcs[f].params)
		add(f, row{args: func(*abiEnv) []uint64 { a := make([]uint64, n); a[0] = 2; return a }, want: errnoSuccess})
		add(f, row{args: zero(n), want: errnoBadf})
	}
	add("environ_get", row{args: zero(2), want: errnoSuccess})
	add("args_get", row{args: zero(2), want: errnoSuccess})
	for _, f := range []string{"environ_sizes_get", "args_sizes_get"} {
		add(f, row{args: func(e *abiEnv) []uint64 { e.poison(); return []uint64{uint64(e.ret), uint64(e.ret + 4)} }, want: errnoSuccess, check: wantNull})
		add(f, row{args: func(e *abiEnv) []uint64 { return []uint64{uint64(bad), uint64(e.ret)} }, want: errnoFault})
	}
	add("clock_time_get", row{args: func(e *abiEnv) []uint64 { return []uint64{0, 0, uint64(e.ret)} }, want: errnoSuccess,
		check: func(t *testing.T, e *abiEnv) {
			if b, _ := e.in.mod.Memory().Read(e.ret, 8); int64(binary.LittleEndian.Uint64(b)) < e.s.start.UnixNano() {
				t.Errorf("realtime %d before the stream started", binary.LittleEndian.Uint64(b))
			}
		}})
	add("clock_time_get", row{args: func(e *abiEnv) []uint64 { return []uint64{1, 0, uint64(e.ret)} }, want: errnoSuccess})
	add("clock_time_get", row{args: func(e *abiEnv) []uint64 { return []uint64{2, 0, uint64(e.ret)} }, want: errnoNotsup})
	add("clock_time_get", row{args: func(e *abiEnv) []uint64 { return []uint64{0, 0, uint64(bad)} }, want: errnoFault})
	add("clock_res_get", row{args: func(e *abiEnv) []uint64 { return []uint64{1, uint64(e.ret)} }, want: errnoSuccess})
	add("clock_res_get", row{args: func(e *abiEnv) []uint64 { return []uint64{3, uint64(e.ret)} }, want: errnoNotsup})
	add("fd_advise", row{args: zero(4), want: errnoSuccess})
	add("fd_readdir", row{args: func(e *abiEnv) []uint64 { return []uint64{3, 0, 0, 0, uint64(e.ret)} }, want: errnoNotdir})
	add("fd_renumber", row{args: func(*abiEnv) []uint64 { return []uint64{1, 2} }, want: errnoNotsup})
	add("fd_renumber", row{args: func(*abiEnv) []uint64 { return []uint64{1, 7} }, want: errnoBadf})
	add("fd_tell", row{args: func(e *abiEnv) []uint64 { return []uint64{1, uint64(e.ret)} }, want: errnoSuccess})
	add("fd_tell", row{args: func(e *abiEnv) []uint64 { return []uint64{4, uint64(e.ret)} }, want: errnoBadf})
	add("fd_prestat_get", row{args: zero(2), want: errnoBadf})
	add("fd_prestat_dir_name", row{args: zero(3), want: errnoNosys})
	add("fd_filestat_get", row{args: zero(2), want: errnoBadf})
	add("path_open", row{args: zero(9), want: errnoNoent})
	for _, f := range []string{"path_filestat_get", "path_create_directory", "path_filestat_set_times", "path_link", "path_remove_directory", "path_rename", "path_symlink", "path_unlink_file", "sock_shutdown"} {
		add(f, row{args: zero(len(funcs[f].params)), want: errnoNotsup})
	}
	add("path_readlink", row{args: func(e *abiEnv) []uint64 { return []uint64{3, 0, 0, 0, 0, uint64(e.ret)} }, want: errnoNotsup})
	add("sock_accept", row{args: func(e *abiEnv) []uint64 { return []uint64{3, 0, uint64(e.ret)} }, want: errnoNotsup})
	add("sock_recv", row{args: func(e *abiEnv) []uint64 { return []uint64{3, 0, 0, 0, uint64(e.ret), uint64(e.ret + 4)} }, want: errnoNotsup})
	add("sock_send", row{args: func(e *abiEnv) []uint64 { return []uint64{3, 0, 0, 0, uint64(e.ret)} }, want: errnoNotsup})
	add("random_get", row{args: func(e *abiEnv) []uint64 { e.poison(); return []uint64{uint64(e.ret), 8} }, want: errnoSuccess,
		check: func(t *testing.T, e *abiEnv) {
			if e.u32(e.ret) == 0xdeadbeef && e.u32(e.ret+4) == 0xdeadbeef {
				t.Error("no random bytes written")
			}
		}})
	add("random_get", row{args: func(e *abiEnv) []uint64 { return []uint64{uint64(e.ret), randomGetMax + 1} }, want: errnoInval})
	add("random_get", row{args: func(e *abiEnv) []uint64 { return []uint64{uint64(bad), 0} }, want: errnoSuccess})
	add("sched_yield", row{args: zero(0), want: errnoSuccess})
	add("poll_oneoff", row{args: func(e *abiEnv) []uint64 { e.poison(); return []uint64{0, 0, 1, uint64(e.ret)} }, want: errnoSuccess,
		check: func(t *testing.T, e *abiEnv) {
			if e.u32(e.ret) != 0 {
				t.Errorf("nevents %d", e.u32(e.ret))
			}
		}})

	for name := range funcs {
		if name != "proc_exit" && len(rows[name]) == 0 {
			t.Errorf("no rows for %s", name)
		}
	}
	for name, rs := range rows {
		t.Run(name, func(t *testing.T) {
			for i, r := range rs {
				e := newABIEnv(t)
				a := r.args(e)
				h := &hc{ctx: context.WithValue(context.Background(), instanceKey{}, e.in), in: e.in, mem: e.in.mod.Memory()}
				if got := funcs[r.fn].fn(h, a); got != r.want {
					t.Errorf("row %d %s%v = %d, want %d", i, r.fn, a, got, r.want)
				}
				if r.check != nil {
					r.check(t, e)
				}
			}
		})
	}
	t.Run("proc_exit", func(t *testing.T) {
		defer func() {
			if r := recover(); r == nil || !strings.Contains(toString(r), "exit_code(3)") {
				t.Errorf("proc_exit(3) panicked with %v, want an exit error", r)
			}
		}()
		e := newABIEnv(t)
		funcs["proc_exit"].fn(&hc{in: e.in, mem: e.in.mod.Memory()}, []uint64{3})
	})
}

func toString(v any) string {
	if err, ok := v.(error); ok {
		return err.Error()
	}
	return ""
}

// TestEnviron: the VM's environment reaches the guest through WASI as Envoy gives it from
// vm_config.environment_variables; Go's runtime reads it at start-up, so the probe's
// proxy_on_configure sees it with syscall.Getenv.
func TestEnviron(t *testing.T) {
	for name, tc := range map[string]struct {
		env     []string
		config  string
		wantErr string
	}{
		"set":                {env: []string{"A=1", "POD=details-v1"}, config: "env:POD=details-v1"},
		"value with =":       {env: []string{"K=x=y"}, config: "env:K=x=y"},
		"empty value":        {env: []string{"E="}, config: "env:E="},
		"absent":             {env: []string{"A=1"}, config: "env:POD=details-v1", wantErr: "configur"},
		"no environment":     {config: "env:A=1", wantErr: "configur"},
		"entry without =":    {env: []string{"A"}, config: "x", wantErr: "not NAME=value"},
		"entry without name": {env: []string{"=1"}, config: "x", wantErr: "not NAME=value"},
		"NUL byte":           {env: []string{"A=\x00"}, config: "x", wantErr: "not NAME=value"},
		"too large":          {env: []string{"A=" + strings.Repeat("x", maxEnvBytes)}, config: "x", wantErr: "more than the 65536 allowed"},
	} {
		t.Run(name, func(t *testing.T) {
			p, err := NewPlugin(context.Background(), PluginConfig{Module: probe(t), Name: "env", Configuration: []byte(tc.config), Env: tc.env, PoolSize: 1})
			if err == nil {
				defer p.Close(context.Background())
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("NewPlugin: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("NewPlugin err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}
