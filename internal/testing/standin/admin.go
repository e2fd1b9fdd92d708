package standin

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"sort"
	"sync"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Stats are Envoy-named counters and gauges. A stat is "used" (shown by /stats?usedonly) once
// it has been set, as pilot-agent's readiness check expects of Envoy.
type Stats struct {
	mu   sync.Mutex
	vals map[string]uint64
}

// NewStats is an empty set.
func NewStats() *Stats { return &Stats{vals: map[string]uint64{}} }

// Set sets a gauge.
func (s *Stats) Set(name string, v uint64) {
	s.mu.Lock()
	s.vals[name] = v
	s.mu.Unlock()
}

// Add adds to a counter (negative for a gauge going down).
func (s *Stats) Add(name string, d int64) {
	s.mu.Lock()
	s.vals[name] = uint64(int64(s.vals[name]) + d)
	s.mu.Unlock()
}

// Get is a stat's value (0 when unset).
func (s *Stats) Get(name string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.vals[name]
}

func (s *Stats) sorted(filter *regexp.Regexp) [][2]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.vals))
	for n := range s.vals {
		if filter == nil || filter.MatchString(n) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	out := make([][2]any, 0, len(names))
	for _, n := range names {
		out = append(out, [2]any{n, s.vals[n]})
	}
	return out
}

var promName = regexp.MustCompile(`[^a-zA-Z0-9_]`)

// serveAdmin starts the admin listener of the bootstrap.
func (s *Server) serveAdmin() (*http.Server, error) {
	ln, err := net.Listen("tcp", s.bs.AdminAddr)
	if err != nil {
		return nil, fmt.Errorf("admin listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		var filter *regexp.Regexp
		if f := r.URL.Query().Get("filter"); f != "" {
			re, err := regexp.Compile(f)
			if err != nil {
				http.Error(w, "Invalid re2 regex", http.StatusBadRequest)
				return
			}
			filter = re
		}
		w.Header().Set("Content-Type", "text/plain; charset=UTF-8")
		if r.URL.Query().Get("format") == "prometheus" {
			s.writePrometheus(w, filter)
			return
		}
		for _, kv := range s.stats.sorted(filter) {
			_, _ = fmt.Fprintf(w, "%s: %d\n", kv[0], kv[1])
		}
	})
	mux.HandleFunc("GET /stats/prometheus", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		s.writePrometheus(w, nil)
	})
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		st := s.stats.Get("server.state")
		if st != stateLive {
			http.Error(w, stateName(st), http.StatusServiceUnavailable)
			return
		}
		_, _ = fmt.Fprintln(w, "LIVE")
	})
	mux.HandleFunc("GET /server_info", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		node, _ := protojson.Marshal(s.bs.Node)
		_ = json.NewEncoder(w).Encode(map[string]any{
			"version": Version, "state": stateName(s.stats.Get("server.state")),
			"node": json.RawMessage(node),
			"command_line_options": map[string]any{
				"config_path": s.flags.ConfigPath, "drain_time": s.flags.DrainTime.String(),
				"drain_strategy": s.flags.DrainStrategy, "log_level": s.flags.LogLevel,
			},
		})
	})
	mux.HandleFunc("GET /config_dump", s.configDump)
	mux.HandleFunc("POST /drain_listeners", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		s.drain(q.Has("inboundonly"), q.Has("graceful"), q.Has("skip_exit"))
		_, _ = fmt.Fprintln(w, "OK")
	})
	mux.HandleFunc("POST /quitquitquit", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = fmt.Fprintln(w, "OK")
		s.quitNow()
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, fmt.Sprintf("%s %s is not an admin endpoint of wasme's test proxy (it serves /stats, /stats/prometheus, /ready, /server_info, /config_dump, POST /drain_listeners, POST /quitquitquit)", r.Method, r.URL.Path), http.StatusNotFound)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: readHeaderTimeout}
	go func() { _ = srv.Serve(ln) }()
	return srv, nil
}

func stateName(st uint64) string {
	switch st {
	case stateLive:
		return "LIVE"
	case stateDraining:
		return "DRAINING"
	case statePreInitializing:
		return "PRE_INITIALIZING"
	case stateInitializing:
		return "INITIALIZING"
	}
	return "UNKNOWN"
}

// writePrometheus writes every stat as an untyped sample named envoy_<name> (dots and other
// characters as underscores); tag extraction is not implemented.
func (s *Server) writePrometheus(w http.ResponseWriter, filter *regexp.Regexp) {
	for _, kv := range s.stats.sorted(filter) {
		n := "envoy_" + promName.ReplaceAllString(kv[0].(string), "_")
		_, _ = fmt.Fprintf(w, "# TYPE %s untyped\n%s %d\n", n, n, kv[1])
	}
}

// configDump answers with the versions of the dynamic listeners and extension configs (what a
// test needs to tell whether a listener was rewritten); the resources themselves are left out:
// they hold Istio's own filter types, which this binary cannot render as JSON.
func (s *Server) configDump(w http.ResponseWriter, _ *http.Request) {
	s.mu.RLock()
	snap := s.snap
	s.mu.RUnlock()
	ld := &adminv3.ListenersConfigDump{VersionInfo: snap.ldsVersion}
	for _, name := range sortedKeys(snap.listenerVersions) {
		ld.DynamicListeners = append(ld.DynamicListeners, &adminv3.ListenersConfigDump_DynamicListener{
			Name: name,
			ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{
				VersionInfo: snap.listenerVersions[name], LastUpdated: timestamppb.New(snap.built),
			},
		})
	}
	ed := &adminv3.EcdsConfigDump{}
	for _, name := range sortedKeys(snap.ecdsVersions) {
		ed.EcdsFilters = append(ed.EcdsFilters, &adminv3.EcdsConfigDump_EcdsFilterConfig{
			VersionInfo: snap.ecdsVersions[name], LastUpdated: timestamppb.New(snap.built),
		})
	}
	var configs []json.RawMessage
	for _, msg := range []any{ld, ed} {
		a, err := anyOf(msg)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		js, err := protojson.Marshal(a)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		configs = append(configs, js)
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"configs": configs})
}

func anyOf(m any) (*anypb.Any, error) {
	switch v := m.(type) {
	case *adminv3.ListenersConfigDump:
		return anypb.New(v)
	case *adminv3.EcdsConfigDump:
		return anypb.New(v)
	}
	return nil, fmt.Errorf("config dump of %T", m)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// drain starts draining the dynamic listeners (the inbound ones only when inboundOnly), as
// Envoy's /drain_listeners: responses carry Connection: close from now on, and unless skipExit
// the listeners stop accepting after the drain time (at once without graceful).
func (s *Server) drain(inboundOnly, graceful, skipExit bool) {
	s.mu.Lock()
	s.draining = true
	var ls []*dynListener
	for _, l := range s.listeners {
		if !inboundOnly || l.inbound {
			ls = append(ls, l)
		}
	}
	s.mu.Unlock()
	s.log.Info("draining listeners", "inboundOnly", inboundOnly, "graceful", graceful, "skipExit", skipExit, "listeners", len(ls), "drainTime", s.flags.DrainTime)
	s.stats.Set("listener_manager.total_listeners_draining", uint64(len(ls)))
	for _, l := range ls {
		l.startDrain()
		if skipExit {
			continue
		}
		delay := time.Duration(0)
		if graceful {
			delay = s.flags.DrainTime
		}
		time.AfterFunc(delay, func() { l.stopAccepting() })
	}
}
