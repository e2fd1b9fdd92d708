package wasmhost

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Caps on host-side state a guest can grow. The linear memory is capped by
// PluginConfig.MemoryLimit; these bound what the host keeps for the guest outside it, so that
// a filter cannot make the host (the operator's validation, `wasme run`) allocate without end.
// Envoy has none of these; they are far above what real filters use.
const (
	// MaxSharedDataBytes bounds the keys and values of one VM id's shared data.
	MaxSharedDataBytes = 16 << 20
	// MaxQueueBytes bounds the items waiting in all shared queues of one VM id.
	MaxQueueBytes = 16 << 20
	// MaxQueueItems bounds the items waiting in one shared queue.
	MaxQueueItems = 10000
	// MaxQueues bounds the shared queues one VM id may register.
	MaxQueues = 1024
	// MaxMetrics bounds the metrics one plugin may define.
	MaxMetrics = 10000
	// MaxTableEntries bounds every table of a module, at instantiation and after table.grow.
	MaxTableEntries = 1 << 20
)

// entryOverhead is what the host spends per shared data entry besides key and value (map
// slot, slice headers): without it, a flood of empty values would be free.
const entryOverhead = 64

// LimitError is a guest breaking one of the host's limits. The call that broke it fails, the
// instance is discarded, and at start-up (validation) the filter is refused naming the limit.
type LimitError struct {
	// Limit names the limit, e.g. "shared data (16 MiB per VM)".
	Limit string
	// Detail says what the guest did.
	Detail string
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("the filter exceeded the host limit on %s: %s", e.Limit, e.Detail)
}

// breakLimit aborts the running guest call. It is called from host functions only: wazero
// recovers the panic and returns it, wrapped, as the call's error, which call() turns into a
// broken instance.
func breakLimit(limit, format string, args ...any) {
	panic(&LimitError{Limit: limit, Detail: fmt.Sprintf(format, args...)})
}

// AsLimitError returns the LimitError in err's chain, if any.
func AsLimitError(err error) (*LimitError, bool) {
	var le *LimitError
	ok := errors.As(err, &le)
	return le, ok
}

// capTables bounds the tables of a module to MaxTableEntries entries: it refuses a module
// that declares a larger one, and gives the tables that have no maximum (or a larger one) a
// maximum of MaxTableEntries, by rewriting the table section. wazero allocates a table's
// minimum at instantiation, and table.grow goes up to the maximum, or to 2^32 entries (32 GiB
// of references) without one. Toolchains emit tables without a maximum (Go's wasip1 does) and
// never grow them that far; a grow past the cap fails as the Wasm spec allows (-1). A
// malformed module is returned as it is, for wazero's decoder to report.
func capTables(module []byte) ([]byte, error) {
	b := module[8:]
	for len(b) > 0 {
		start := len(module) - len(b)
		id := b[0]
		size, n := binary.Uvarint(b[1:])
		if n <= 0 || uint64(len(b)-1-n) < size {
			return module, nil
		}
		payload := b[1+n : 1+n+int(size)]
		b = b[1+n+int(size):]
		// Imported tables need not be looked at: no host module here exports one, so such a
		// module fails to instantiate without a table being allocated.
		if id == 4 {
			capped, err := capTableSection(payload)
			if err != nil || capped == nil {
				return module, err
			}
			out := append([]byte(nil), module[:start]...)
			out = append(out, 4)
			out = binary.AppendUvarint(out, uint64(len(capped)))
			out = append(out, capped...)
			return append(out, b...), nil
		}
	}
	return module, nil
}

// capTableSection returns the table section with every maximum capped, or nil when it is
// malformed or needs no change.
func capTableSection(p []byte) ([]byte, error) {
	count, n := binary.Uvarint(p)
	if n <= 0 {
		return nil, nil
	}
	out := binary.AppendUvarint(nil, count)
	p = p[n:]
	changed := false
	for i := uint64(0); i < count; i++ {
		if len(p) < 2 {
			return nil, nil
		}
		reftype, flags := p[0], p[1]
		if flags > 1 {
			return nil, nil // table64 and shared limits: not proxy-wasm, wazero refuses them
		}
		min, n := binary.Uvarint(p[2:])
		if n <= 0 {
			return nil, nil
		}
		p = p[2+n:]
		if min > MaxTableEntries {
			return nil, tableLimit(fmt.Sprintf("table %d declares %d entries", i, min))
		}
		max := uint64(MaxTableEntries)
		if flags == 1 {
			m, n := binary.Uvarint(p)
			if n <= 0 {
				return nil, nil
			}
			p = p[n:]
			if m <= MaxTableEntries {
				max = m
			} else {
				changed = true
			}
		} else {
			changed = true
		}
		out = append(out, reftype, 1)
		out = binary.AppendUvarint(out, min)
		out = binary.AppendUvarint(out, max)
	}
	if !changed {
		return nil, nil
	}
	return append(out, p...), nil
}

func tableLimit(detail string) error {
	return &LimitError{Limit: fmt.Sprintf("table size (%d entries)", MaxTableEntries), Detail: detail}
}
