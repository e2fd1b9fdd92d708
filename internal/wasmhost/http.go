package wasmhost

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

type fieldMap struct {
	f      fields
	sealed bool // already sent on: changes could not take effect any more
}

type bodyBuf struct {
	data     []byte
	readOnly bool // outside its callback, or a configuration
	changed  bool // the filter set it
}

type localResponse struct {
	code    int
	details string
	body    []byte
	headers fields
}

// stream is one HTTP request/response pair in one instance (a proxy-wasm stream context).
type stream struct {
	id  uint32
	in  *instance
	p   *Plugin
	req *http.Request

	reqHeaders, reqTrailers, respHeaders, respTrailers *fieldMap
	reqBody, respBody                                  *bodyBuf

	status      int
	start       time.Time
	local       *localResponse
	respStarted bool
	reset       bool
	props       map[string][]byte
	resumeCh    chan struct{}
	failed      bool // FAIL_OPEN after an error: the filter is skipped for the rest of the stream
}

func (s *stream) resume() {
	select {
	case s.resumeCh <- struct{}{}:
	default:
	}
}

// Wrap returns next behind this filter: the request passes the filter's request callbacks
// before next sees it, and next's response passes the response callbacks before the client
// sees it.
func (p *Plugin) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { p.serve(w, r, next) })
}

// Chain wraps next in the plugins in Envoy's order: request callbacks run first to last,
// response callbacks last to first.
func Chain(plugins ...*Plugin) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		for i := len(plugins) - 1; i >= 0; i-- {
			next = plugins[i].Wrap(next)
		}
		return next
	}
}

func (p *Plugin) newStream(r *http.Request) (*stream, error) {
	in, err := p.acquire(r.Context())
	if err != nil {
		return nil, err
	}
	defer in.mu.Unlock()
	in.nextID++
	s := &stream{id: in.nextID, in: in, p: p, req: r, start: time.Now(), resumeCh: make(chan struct{}, 1)}
	in.streams[s.id] = s
	in.active, in.cur = s.id, s
	if in.exported("proxy_on_context_create") {
		if _, err := in.call(r.Context(), p.cfg.CallTimeout, "proxy_on_context_create", uint64(s.id), uint64(in.root)); err != nil {
			delete(in.streams, s.id)
			return nil, err
		}
	}
	return s, nil
}

// invoke runs a stream callback; a callback the module does not export continues.
func (s *stream) invoke(ctx context.Context, name string, args ...uint64) (uint64, error) {
	in := s.in
	in.mu.Lock()
	defer in.mu.Unlock()
	if err := in.err(); err != nil {
		return 0, err
	}
	if !in.exported(name) {
		return actionContinue, nil
	}
	select { // drop a stale resume so that a Pause below waits for a fresh one
	case <-s.resumeCh:
	default:
	}
	in.active, in.cur = s.id, s
	return in.call(ctx, s.p.cfg.CallTimeout, name, append([]uint64{uint64(s.id)}, args...)...)
}

// await blocks a paused stream until the filter continues it (from a later callback such as
// proxy_on_tick or proxy_on_queue_ready), sends a local response, or resets it.
func (s *stream) await(ctx context.Context, what string) error {
	t := time.NewTimer(s.p.cfg.PauseTimeout)
	defer t.Stop()
	select {
	case <-s.resumeCh:
		return nil
	case <-t.C:
		return fmt.Errorf("wasmhost: the filter paused the %s and did not continue it within %v", what, s.p.cfg.PauseTimeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *stream) finish() {
	in := s.in
	in.mu.Lock()
	defer in.mu.Unlock()
	defer delete(in.streams, s.id)
	if in.err() != nil {
		return
	}
	in.active, in.cur = s.id, s
	ctx := context.Background()
	// A stream context's proxy_on_done result does not delay its end in Envoy either
	// (context.cc Context::onDestroy): only root contexts wait for proxy_done.
	for _, cb := range []string{"proxy_on_done", "proxy_on_log", "proxy_on_delete"} {
		if in.exported(cb) {
			if _, err := in.call(ctx, s.p.cfg.CallTimeout, cb, uint64(s.id)); err != nil {
				s.p.log.Error(cb+" failed", "err", err)
				return
			}
		}
	}
}

// fail applies the failure policy to an error before the response started. It returns true
// when the caller should stop (the response was written).
func (s *stream) fail(w http.ResponseWriter, err error) bool {
	s.p.log.Error("filter failed", "err", err, "fail_open", s.p.cfg.FailOpen)
	s.failed = true
	if s.p.cfg.FailOpen {
		return false
	}
	writeFailClosed(w, s.p.cfg.Name)
	return true
}

func writeFailClosed(w http.ResponseWriter, name string) {
	h := w.Header()
	clear(h)
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusServiceUnavailable)
	fmt.Fprintf(w, "wasm filter %q failed\n", name)
}

func writeLocal(w http.ResponseWriter, lr *localResponse) {
	h := w.Header()
	clear(h)
	lr.headers.applyTo(h)
	if len(lr.body) > 0 && h.Get("Content-Type") == "" {
		h.Set("Content-Type", "text/plain")
	}
	h.Set("Content-Length", strconv.Itoa(len(lr.body)))
	w.WriteHeader(lr.code)
	_, _ = w.Write(lr.body)
}

func requestFields(r *http.Request) fields {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	pseudo := []pair{
		{":authority", r.Host},
		{":path", r.URL.RequestURI()},
		{":method", r.Method},
		{":scheme", scheme},
	}
	return headerFields(pseudo, r.Header)
}

// requestFrom makes the request next sees from the (possibly edited) request headers.
func requestFrom(r *http.Request, f fields) *http.Request {
	r2 := r.Clone(r.Context())
	r2.Body = r.Body
	f.applyTo(r2.Header)
	if v, ok := f.get(":method"); ok && v != "" {
		r2.Method = v
	}
	if v, ok := f.get(":authority"); ok {
		r2.Host = v
	}
	if v, ok := f.get(":path"); ok && v != r.URL.RequestURI() {
		if u, err := url.ParseRequestURI(v); err == nil {
			r2.URL.Path, r2.URL.RawPath, r2.URL.RawQuery = u.Path, u.RawPath, u.RawQuery
			r2.RequestURI = v
		}
	}
	return r2
}

func eos(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

func (p *Plugin) serve(w http.ResponseWriter, r *http.Request, next http.Handler) {
	s, err := p.newStream(r)
	if err != nil {
		p.log.Error("filter failed to start a stream", "err", err, "fail_open", p.cfg.FailOpen)
		if p.cfg.FailOpen {
			next.ServeHTTP(w, r)
		} else {
			writeFailClosed(w, p.cfg.Name)
		}
		return
	}
	defer s.finish()
	ctx := r.Context()

	hasBody := r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
	s.reqHeaders = &fieldMap{f: requestFields(r)}
	act, err := s.invoke(ctx, "proxy_on_request_headers", uint64(len(s.reqHeaders.f)), eos(!hasBody))
	if err == nil && act == actionPause && !hasBody && s.local == nil && !s.reset {
		err = s.await(ctx, "request")
	}
	if err != nil && s.fail(w, err) {
		return
	}
	if s.local != nil || s.reset {
		s.respondLocal(w)
		return
	}

	body := r.Body
	var reqData []byte
	if hasBody && !s.failed && s.in.exported("proxy_on_request_body") {
		data, err := io.ReadAll(io.LimitReader(r.Body, int64(p.cfg.MaxBodyBytes)+1))
		if err != nil {
			http.Error(w, "reading request body: "+err.Error(), http.StatusBadRequest)
			return
		}
		if len(data) > p.cfg.MaxBodyBytes {
			http.Error(w, "request body too large for the wasm filter", http.StatusRequestEntityTooLarge)
			return
		}
		s.reqBody = &bodyBuf{data: data}
		act, err = s.invoke(ctx, "proxy_on_request_body", uint64(len(data)), 1)
		if err == nil && act == actionPause && s.local == nil && !s.reset {
			err = s.await(ctx, "request")
		}
		if err != nil && s.fail(w, err) {
			return
		}
		if s.local != nil || s.reset {
			s.respondLocal(w)
			return
		}
		reqData = s.reqBody.data
		s.reqBody = nil // passed on: no longer the filter's to read or change (Envoy)
		if len(r.Trailer) > 0 && !s.failed && s.in.exported("proxy_on_request_trailers") {
			s.reqTrailers = &fieldMap{f: headerFields(nil, r.Trailer)}
			_, err = s.invoke(ctx, "proxy_on_request_trailers", uint64(len(s.reqTrailers.f)))
			if err != nil && s.fail(w, err) {
				return
			}
			if s.local != nil || s.reset {
				s.respondLocal(w)
				return
			}
			s.reqTrailers.f.applyTo(r.Trailer)
			s.reqTrailers.sealed = true
		}
		body = io.NopCloser(bytes.NewReader(reqData))
	} else if err == nil && act == actionPause && hasBody && !s.failed {
		if err := s.await(ctx, "request"); err != nil && s.fail(w, err) {
			return
		}
	}

	s.reqHeaders.sealed = true
	r2 := requestFrom(r, s.reqHeaders.f)
	r2.Body = body
	if reqData != nil {
		r2.ContentLength = int64(len(reqData))
		r2.Header.Del("Content-Length")
	}
	rw := &respWriter{w: w, s: s, ctx: ctx, head: r.Method == http.MethodHead}
	rw.bodyCB = s.in.exported("proxy_on_response_body")
	next.ServeHTTP(rw, r2)
	rw.finish()
}

// respondLocal writes the filter's local response, or resets the connection.
func (s *stream) respondLocal(w http.ResponseWriter) {
	if s.reset {
		panic(http.ErrAbortHandler)
	}
	s.respStarted = true
	s.status = s.local.code
	writeLocal(w, s.local)
}

// respWriter runs the response callbacks on what next writes.
type respWriter struct {
	w      http.ResponseWriter
	s      *stream
	ctx    context.Context
	bodyCB bool

	head        bool // a HEAD request: the response has no body
	wroteHeader bool
	skip        bool // the upstream response was replaced; swallow it
	buf         []byte

	// With a body callback, the headers wait for the first body flush so that Content-Length
	// can follow a body the filter changed; Envoy keeps it as long as the body is unchanged.
	pending  bool
	code     int
	declared int64 // the Content-Length the client was promised, or -1
	sent     int64
	upLength int64 // the upstream's Content-Length, or -1: its last byte ends the stream
	upIn     int64
	ended    bool   // proxy_on_response_body has seen end_of_stream
	held     []byte // body passed by the filter, waiting for the headers
}

// Flush passes an upstream's flush on once the headers are out, so streaming responses
// stream through the filter.
func (rw *respWriter) Flush() {
	if rw.pending || rw.skip {
		return
	}
	if f, ok := rw.w.(http.Flusher); ok {
		f.Flush()
	}
}

func (rw *respWriter) Header() http.Header { return rw.w.Header() }

func (rw *respWriter) WriteHeader(code int) {
	if rw.wroteHeader {
		return
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		rw.w.WriteHeader(code) // informational responses pass straight through
		return
	}
	rw.wroteHeader = true
	s := rw.s
	s.status = code
	h := rw.w.Header()
	// A response that cannot have a body ends with its headers, as Envoy's codec reports it:
	// end_of_stream is true and no body callback follows.
	noBody := rw.head || code == http.StatusNoContent || code == http.StatusNotModified || h.Get("Content-Length") == "0"
	rw.upLength = -1
	if n, err := strconv.ParseInt(h.Get("Content-Length"), 10, 64); err == nil && n >= 0 {
		rw.upLength = n
	}
	if noBody {
		rw.bodyCB = false
	}
	s.respHeaders = &fieldMap{f: headerFields([]pair{{":status", strconv.Itoa(code)}}, h)}
	if !s.failed {
		act, err := s.invoke(rw.ctx, "proxy_on_response_headers", uint64(len(s.respHeaders.f)), eos(noBody))
		if err == nil && act == actionPause && s.local == nil && !s.reset {
			err = s.await(rw.ctx, "response")
		}
		if err != nil && s.fail(rw.w, err) {
			rw.skip = true
			return
		}
		if s.local != nil || s.reset {
			rw.skip = true
			s.respondLocal(rw.w)
			return
		}
		if !s.failed {
			s.respHeaders.f.applyTo(h)
			if v, ok := s.respHeaders.f.get(":status"); ok {
				if c, err := strconv.Atoi(v); err == nil && c >= 100 && c <= 999 {
					code = c
					s.status = c
				}
			}
		}
	}
	s.respHeaders.sealed = true
	s.respStarted = true
	rw.declared = -1
	if v := h.Get("Content-Length"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
			rw.declared = n
		}
	}
	if rw.bodyCB && !s.failed {
		rw.pending, rw.code = true, code
		return
	}
	rw.w.WriteHeader(code)
}

// sendHeader writes the response headers held for the first body flush. in is the length of
// what the filter was given, out what it passed on; end says whether out is the whole body.
func (rw *respWriter) sendHeader(in, out int, end bool) {
	rw.pending = false
	if rw.declared >= 0 && !rw.head {
		h := rw.w.Header()
		switch {
		case end && int64(out) != rw.declared:
			h.Set("Content-Length", strconv.Itoa(out)) // the whole new body is known
			rw.declared = int64(out)
		case !end && in != out:
			h.Del("Content-Length") // the filter changes the body as it streams: chunked
			rw.declared = -1
		}
	}
	rw.w.WriteHeader(rw.code)
}

func (rw *respWriter) Write(b []byte) (int, error) {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	s := rw.s
	if rw.skip {
		return len(b), nil
	}
	if !rw.bodyCB || s.failed {
		return rw.w.Write(b)
	}
	if rw.ended {
		return 0, errors.New("wasmhost: the upstream wrote past its Content-Length")
	}
	rw.buf = append(rw.buf, b...)
	if len(rw.buf) > s.p.cfg.MaxBodyBytes {
		rw.abort(errors.New("wasmhost: response body buffered for the filter exceeds the limit"))
	}
	// With a Content-Length, the chunk that completes it carries end_of_stream, as the last
	// data frame does in Envoy.
	rw.upIn += int64(len(b))
	last := rw.upLength >= 0 && rw.upIn >= rw.upLength
	if err := rw.flushBody(last); err != nil {
		return 0, err
	}
	return len(b), nil
}

// flushBody hands the buffered body to proxy_on_response_body and writes it on unless the
// filter pauses to see more.
func (rw *respWriter) flushBody(end bool) error {
	s := rw.s
	rw.ended = end
	s.respBody = &bodyBuf{data: rw.buf}
	act, err := s.invoke(rw.ctx, "proxy_on_response_body", uint64(len(rw.buf)), eos(end))
	data := s.respBody.data
	s.respBody = nil
	if err != nil {
		if !s.p.cfg.FailOpen {
			if rw.pending { // nothing sent yet: the client gets FAIL_CLOSED's 503
				s.p.log.Error("filter failed", "err", err, "fail_open", false)
				rw.pending, rw.skip = false, true
				writeFailClosed(rw.w, s.p.cfg.Name)
				return nil
			}
			rw.abort(err)
		}
		s.failed = true
		data = rw.buf
	} else if s.reset {
		panic(http.ErrAbortHandler)
	} else if act == actionPause && !end {
		rw.buf = data
		return nil
	}
	in := len(rw.buf)
	rw.buf = nil
	if rw.pending && !end && rw.upLength >= 0 && rw.upLength <= int64(s.p.cfg.MaxBodyBytes) {
		// A body of known, bounded length is held until its end: the filter may still change
		// its length, and the client gets the true Content-Length.
		rw.held = append(rw.held, data...)
		return nil
	}
	if rw.pending {
		data = append(rw.held, data...)
		rw.held = nil
		rw.sendHeader(in, len(data), end)
	}
	if rw.declared >= 0 && (rw.sent+int64(len(data)) > rw.declared || (end && rw.sent+int64(len(data)) != rw.declared)) {
		rw.abort(fmt.Errorf("wasmhost: the filter changed the response body to a length other than the Content-Length already sent (%d); remove Content-Length in proxy_on_response_headers when changing the body", rw.declared))
	}
	rw.sent += int64(len(data))
	_, werr := rw.w.Write(data)
	return werr
}

// abort ends a response that can no longer become a 503: its headers are already out.
func (rw *respWriter) abort(err error) {
	rw.s.p.log.Error("filter failed mid-response; resetting the stream", "err", err)
	panic(http.ErrAbortHandler)
}

func (rw *respWriter) finish() {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	s := rw.s
	if rw.skip {
		return
	}
	if rw.bodyCB && !s.failed && !rw.ended {
		if err := rw.flushBody(true); err != nil {
			return
		}
	}
	if rw.pending { // the filter failed open before the first flush
		rw.sendHeader(0, 0, false)
	}
	rw.trailers()
}

// trailers runs proxy_on_response_trailers on the trailers next declared.
func (rw *respWriter) trailers() {
	s := rw.s
	if s.failed || !s.in.exported("proxy_on_response_trailers") {
		return
	}
	h := rw.w.Header()
	t := http.Header{}
	for _, decl := range h.Values("Trailer") {
		for _, k := range strings.Split(decl, ",") {
			k = http.CanonicalHeaderKey(strings.TrimSpace(k))
			if vs, ok := h[k]; ok {
				t[k] = vs
			}
		}
	}
	for k, vs := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			t[strings.TrimPrefix(k, http.TrailerPrefix)] = vs
		}
	}
	if len(t) == 0 {
		return
	}
	s.respTrailers = &fieldMap{f: headerFields(nil, t)}
	if _, err := s.invoke(rw.ctx, "proxy_on_response_trailers", uint64(len(s.respTrailers.f))); err != nil {
		if !s.p.cfg.FailOpen {
			rw.abort(err)
		}
		return
	}
	for k := range t {
		h.Del(k)
		h.Del(http.TrailerPrefix + k)
	}
	for _, pr := range s.respTrailers.f {
		h.Add(http.TrailerPrefix+pr.key, pr.value)
	}
	s.respTrailers.sealed = true
}
