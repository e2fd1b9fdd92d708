package cli

import (
	"fmt"
	"io"

	"github.com/go-logr/logr"
	"github.com/spf13/pflag"
	"go.uber.org/zap/zapcore"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
)

// quantity renders a byte count as a Kubernetes quantity, the form of every size flag (64Mi).
func quantity(n int64) string { return resource.NewQuantity(n, resource.BinarySI).String() }

// logFlags are --log-level and --log-format of the in-cluster components.
type logFlags struct{ level, format string }

func (l *logFlags) bind(f *pflag.FlagSet) {
	f.StringVar(&l.level, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&l.format, "log-format", "json", "json (one structured line per event) or text")
}

// logger is a zap logger writing to w at the chosen level and format.
func (l *logFlags) logger(w io.Writer) (logr.Logger, error) {
	level, err := zapcore.ParseLevel(l.level)
	if err != nil {
		return logr.Logger{}, fmt.Errorf("--log-level %q: want debug, info, warn or error", l.level)
	}
	opts := []zap.Opts{zap.WriteTo(w), zap.Level(level)}
	switch l.format {
	case "json":
		opts = append(opts, zap.JSONEncoder())
	case "text":
		opts = append(opts, zap.ConsoleEncoder())
	default:
		return logr.Logger{}, fmt.Errorf("--log-format %q: want json or text", l.format)
	}
	return zap.New(opts...), nil
}
