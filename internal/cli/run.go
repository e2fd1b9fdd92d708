package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"wasme.io/wasme/internal/wasmhost"
	"wasme.io/wasme/pkg/wasmimage"
)

type runOptions struct {
	upstream    string
	listen      string
	config      string
	configFile  string
	rootID      string
	vmID        string
	failOpen    bool
	logLevel    string
	callTimeout time.Duration
	memoryLimit string
	plainHTTP   bool
	insecure    bool
	pull        string
	store       storeFlag
}

func newRunCmd(s streams) *cobra.Command {
	o := runOptions{}
	cmd := &cobra.Command{
		Use:   "run IMAGE|FILE --upstream URL",
		Short: "Run a filter locally in front of an upstream, on wasme's own proxy-wasm host",
		Long: `Run a proxy-wasm filter in a local reverse proxy: every request and response to the
upstream passes through the filter. No Envoy and no Docker are needed: the filter runs on
wasme's own proxy-wasm host, the same one that validates filters before they are deployed.

The filter is a .wasm file, or an image reference. An image in the local store (wasme build,
wasme pull) runs from there, as docker run does; --pull always fetches it from its registry
every time, --pull never only uses the local store. The first line printed says which was
used. Ctrl-C stops it.`,
		Example: `  wasme run custom-header.wasm --upstream http://127.0.0.1:9080
  wasme run custom-header.wasm --upstream http://127.0.0.1:9080 --config '{"name":"x-a","value":"b"}'
  wasme run registry.example/filters/custom-header:v0.1 --upstream http://127.0.0.1:9080 --listen 127.0.0.1:8081`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := o.memoryBytes(); err != nil {
				return err
			}
			return runFilter(cmd.Context(), s, args[0], o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.upstream, "upstream", "", "URL of the server the filter sits in front of (required)")
	f.StringVar(&o.listen, "listen", "127.0.0.1:8080", "address to listen on")
	f.StringVar(&o.config, "config", "", "plugin configuration handed to the filter's proxy_on_configure")
	f.StringVar(&o.configFile, "config-file", "", "read the plugin configuration from this file")
	f.StringVar(&o.rootID, "root-id", "", "root id of the filter (default: the image's, or none for a file)")
	f.StringVar(&o.vmID, "vm-id", "", "VM id of the filter")
	f.BoolVar(&o.failOpen, "fail-open", false, "let requests through when the filter fails (default: answer 503)")
	f.StringVar(&o.logLevel, "log-level", "info", "lowest filter log level shown: trace, debug, info, warn, error, critical")
	f.DurationVar(&o.callTimeout, "call-timeout", wasmhost.DefaultCallTimeout, "longest a single filter callback may run")
	f.StringVar(&o.memoryLimit, "memory-limit", quantity(int64(wasmhost.DefaultMemoryLimit)), "memory limit per filter instance, a quantity such as 128Mi (at least 1Mi)")
	f.BoolVar(&o.plainHTTP, "plain-http", false, "pull the image over plain HTTP")
	f.BoolVar(&o.insecure, "insecure-skip-verify", false, "accept any TLS certificate from the registry")
	f.StringVar(&o.pull, "pull", "missing", "when to pull the image: missing (not in the local store), always, never")
	o.store.bind(cmd)
	_ = cmd.MarkFlagRequired("upstream")
	cmd.MarkFlagsMutuallyExclusive("config", "config-file")
	return cmd
}

func parseLogLevel(s string) (wasmhost.LogLevel, slog.Level, error) {
	levels := []string{"trace", "debug", "info", "warn", "error", "critical"}
	for i, l := range levels {
		if strings.EqualFold(s, l) {
			sl := slog.LevelInfo
			switch {
			case i <= 1:
				sl = slog.LevelDebug
			case i == 3:
				sl = slog.LevelWarn
			case i >= 4:
				sl = slog.LevelError
			}
			return wasmhost.LogLevel(i), sl, nil
		}
	}
	return 0, 0, fmt.Errorf("--log-level %q: want one of %s", s, strings.Join(levels, ", "))
}

// loadFilter reads a .wasm file, or finds the image in the local store or its registry as
// --pull says. It returns the module, the root id the image declares, a name for logs and
// where the module came from.
func loadFilter(ctx context.Context, arg string, o runOptions) (module []byte, rootID, name, source string, err error) {
	module, err = os.ReadFile(arg)
	if err == nil {
		return module, "", filepath.Base(arg), "file", nil
	}
	if !errors.Is(err, fs.ErrNotExist) || strings.HasSuffix(arg, ".wasm") {
		return nil, "", "", "", err
	}
	switch o.pull {
	case "missing", "always", "never":
	default:
		return nil, "", "", "", fmt.Errorf("--pull %q: want missing, always or never", o.pull)
	}
	ref, rerr := parseRef(arg)
	if rerr != nil {
		return nil, "", "", "", fmt.Errorf("%s is not a file, nor an image reference: %w", arg, rerr)
	}
	if o.pull != "always" {
		st, err := o.store.open()
		if err != nil {
			return nil, "", "", "", err
		}
		e, b, err := st.Get(ref)
		switch {
		case err == nil:
			return b, e.Config.RootID(), arg, "local store", nil
		case o.pull == "never" || !errors.Is(err, wasmimage.ErrNotInStore):
			return nil, "", "", "", fmt.Errorf("%w (--pull %s)", err, o.pull)
		}
	}
	img, perr := wasmimage.Pull(ctx, arg,
		wasmimage.WithDefaultCredentials(""),
		wasmimage.WithPlainHTTP(o.plainHTTP),
		wasmimage.WithInsecureSkipVerify(o.insecure))
	if perr != nil {
		return nil, "", "", "", fmt.Errorf("%s is not a file, and pulling it as an image failed: %w", arg, perr)
	}
	return img.Module, img.Config.RootID(), arg, "pulled from its registry", nil
}

// newRunHandler is the reverse proxy of `wasme run`: upstream behind the filter.
func newRunHandler(ctx context.Context, module []byte, name string, o runOptions, log *slog.Logger, level wasmhost.LogLevel) (http.Handler, *wasmhost.Plugin, error) {
	up, err := parseUpstream(o.upstream)
	if err != nil {
		return nil, nil, err
	}
	config := []byte(o.config)
	if o.configFile != "" {
		if config, err = os.ReadFile(o.configFile); err != nil {
			return nil, nil, err
		}
	}
	memory, err := o.memoryBytes()
	if err != nil {
		return nil, nil, err
	}
	p, err := wasmhost.NewPlugin(ctx, wasmhost.PluginConfig{
		Module:        module,
		Name:          name,
		RootID:        o.rootID,
		VMID:          o.vmID,
		Configuration: config,
		FailOpen:      o.failOpen,
		CallTimeout:   o.callTimeout,
		MemoryLimit:   memory,
		Logger:        log,
		LogLevel:      level,
	})
	if err != nil {
		return nil, nil, err
	}
	return p.Wrap(newReverseProxy(up, log)), p, nil
}

func parseUpstream(s string) (*url.URL, error) {
	up, err := url.Parse(s)
	if err != nil || (up.Scheme != "http" && up.Scheme != "https") || up.Host == "" {
		return nil, fmt.Errorf("--upstream %q: want an http:// or https:// URL", s)
	}
	return up, nil
}

func newReverseProxy(up *url.URL, log *slog.Logger) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(up)
			r.SetXForwarded()
		},
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelError),
	}
}

func runFilter(ctx context.Context, s streams, arg string, o runOptions) error {
	level, slevel, err := parseLogLevel(o.logLevel)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(s.errOut, &slog.HandlerOptions{Level: slevel}))
	module, imageRootID, name, source, err := loadFilter(ctx, arg, o)
	if err != nil {
		return err
	}
	if o.rootID == "" {
		o.rootID = imageRootID
	}
	h, p, err := newRunHandler(ctx, module, name, o, log, level)
	if err != nil {
		return err
	}
	defer p.Close(context.WithoutCancel(ctx))

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelError)}
	fmt.Fprintf(s.out, "Listening on http://%s, filter %s (%s; root id %q, ABI %s) in front of %s\n", ln.Addr(), name, source, o.rootID, p.ABIVersion(), o.upstream)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		return err
	}
	fmt.Fprintln(s.out, "Stopped.")
	return nil
}

// memoryBytes is --memory-limit in bytes. A bare number was MiB before sizes became
// quantities; below 1Mi it is refused rather than read as a few bytes.
func (o runOptions) memoryBytes() (uint64, error) {
	n, err := parseSize("--memory-limit", o.memoryLimit)
	if err != nil {
		return 0, err
	}
	if n < 1<<20 {
		return 0, fmt.Errorf("--memory-limit %s: want at least 1Mi, a quantity such as 128Mi", o.memoryLimit)
	}
	return uint64(n), nil
}
