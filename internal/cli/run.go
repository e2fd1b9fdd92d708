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
	memoryMiB   uint64
	plainHTTP   bool
	insecure    bool
}

func newRunCmd(s streams) *cobra.Command {
	o := runOptions{}
	cmd := &cobra.Command{
		Use:   "run IMAGE|FILE --upstream URL",
		Short: "Run a filter locally in front of an upstream, on wasme's own proxy-wasm host",
		Long: `Run a proxy-wasm filter in a local reverse proxy: every request and response to the
upstream passes through the filter. No Envoy and no Docker are needed: the filter runs on
wasme's own proxy-wasm host, the same one that validates filters before they are deployed.

The filter is a .wasm file, or an image reference that is pulled from its registry.
Ctrl-C stops it.`,
		Example: `  wasme run custom-header.wasm --upstream http://127.0.0.1:9080
  wasme run custom-header.wasm --upstream http://127.0.0.1:9080 --config '{"name":"x-a","value":"b"}'
  wasme run registry.example/filters/custom-header:v0.1 --upstream http://127.0.0.1:9080 --listen 127.0.0.1:8081`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
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
	f.Uint64Var(&o.memoryMiB, "memory-limit", wasmhost.DefaultMemoryLimit>>20, "memory limit per filter instance, in MiB")
	f.BoolVar(&o.plainHTTP, "plain-http", false, "pull the image over plain HTTP")
	f.BoolVar(&o.insecure, "insecure-skip-verify", false, "accept any TLS certificate from the registry")
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

// loadFilter reads a .wasm file, or pulls the image when the argument is not a file. It
// returns the module, the root id the image declares, and a name for logs.
func loadFilter(ctx context.Context, arg string, o runOptions) ([]byte, string, string, error) {
	module, err := os.ReadFile(arg)
	if err == nil {
		return module, "", filepath.Base(arg), nil
	}
	if !errors.Is(err, fs.ErrNotExist) || strings.HasSuffix(arg, ".wasm") {
		return nil, "", "", err
	}
	img, perr := wasmimage.Pull(ctx, arg,
		wasmimage.WithDefaultCredentials(""),
		wasmimage.WithPlainHTTP(o.plainHTTP),
		wasmimage.WithInsecureSkipVerify(o.insecure))
	if perr != nil {
		return nil, "", "", fmt.Errorf("%s is not a file, and pulling it as an image failed: %w", arg, perr)
	}
	return img.Module, img.Config.RootID(), arg, nil
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
	p, err := wasmhost.NewPlugin(ctx, wasmhost.PluginConfig{
		Module:        module,
		Name:          name,
		RootID:        o.rootID,
		VMID:          o.vmID,
		Configuration: config,
		FailOpen:      o.failOpen,
		CallTimeout:   o.callTimeout,
		MemoryLimit:   o.memoryMiB << 20,
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
	module, imageRootID, name, err := loadFilter(ctx, arg, o)
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
	fmt.Fprintf(s.out, "Listening on http://%s, filter %s (root id %q, ABI %s) in front of %s\n", ln.Addr(), name, o.rootID, p.ABIVersion(), o.upstream)
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
