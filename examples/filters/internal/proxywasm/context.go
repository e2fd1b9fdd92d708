//go:build wasip1

package proxywasm

// RootContext is a plugin's long-lived context: configuration, timers, and the factory of
// per-request contexts.
type RootContext interface {
	OnVMStart(vmConfigSize int) bool
	OnConfigure(configSize int) bool
	OnTick()
	NewHTTPContext(contextID uint32) HTTPContext
}

// HTTPContext handles one HTTP request/response pair.
type HTTPContext interface {
	OnRequestHeaders(numHeaders int, endOfStream bool) Action
	OnRequestBody(bodySize int, endOfStream bool) Action
	OnResponseHeaders(numHeaders int, endOfStream bool) Action
	OnResponseBody(bodySize int, endOfStream bool) Action
	OnDone()
}

// DefaultRoot gives a RootContext's optional methods their neutral behaviour; embed it.
type DefaultRoot struct{}

// OnVMStart accepts any VM configuration.
func (DefaultRoot) OnVMStart(int) bool { return true }

// OnConfigure accepts any plugin configuration.
func (DefaultRoot) OnConfigure(int) bool { return true }

// OnTick does nothing.
func (DefaultRoot) OnTick() {}

// NewHTTPContext returns a context that lets every stream through untouched.
func (DefaultRoot) NewHTTPContext(uint32) HTTPContext { return DefaultHTTP{} }

// DefaultHTTP gives an HTTPContext's callbacks their pass-through behaviour; embed it.
type DefaultHTTP struct{}

// OnRequestHeaders continues.
func (DefaultHTTP) OnRequestHeaders(int, bool) Action { return Continue }

// OnRequestBody continues.
func (DefaultHTTP) OnRequestBody(int, bool) Action { return Continue }

// OnResponseHeaders continues.
func (DefaultHTTP) OnResponseHeaders(int, bool) Action { return Continue }

// OnResponseBody continues.
func (DefaultHTTP) OnResponseBody(int, bool) Action { return Continue }

// OnDone does nothing.
func (DefaultHTTP) OnDone() {}

var (
	factories = map[string]func(contextID uint32) RootContext{}
	roots     = map[uint32]RootContext{}
	streams   = map[uint32]HTTPContext{}
)

// RegisterRoot makes rootID served by factory. A filter calls it from init.
func RegisterRoot(rootID string, factory func(contextID uint32) RootContext) {
	factories[rootID] = factory
}

// unknownRoot refuses its configuration so that a plugin deployed with a root id this module
// does not serve fails loudly at configuration time instead of silently doing nothing.
type unknownRoot struct {
	DefaultRoot
	rootID string
}

func (r unknownRoot) OnConfigure(int) bool {
	Log(LogError, "this module has no root context named \""+r.rootID+"\"")
	return false
}

func newRoot(contextID uint32) RootContext {
	id, err := GetProperty("plugin_root_id")
	if err == nil || err == StatusNotFound {
		if f, ok := factories[string(id)]; ok {
			return f(contextID)
		}
		// An empty root id is what hosts send when none was configured; serve the only
		// registered root then.
		if len(id) == 0 && len(factories) == 1 {
			for _, f := range factories {
				return f(contextID)
			}
		}
	}
	return unknownRoot{rootID: string(id)}
}

//go:wasmexport proxy_abi_version_0_2_1
func abiVersion() {}

//go:wasmexport proxy_on_context_create
func onContextCreate(contextID, parentID uint32) {
	if parentID == 0 {
		roots[contextID] = newRoot(contextID)
		return
	}
	if root, ok := roots[parentID]; ok {
		streams[contextID] = root.NewHTTPContext(contextID)
	}
}

//go:wasmexport proxy_on_vm_start
func onVMStart(contextID, size uint32) uint32 {
	if root, ok := roots[contextID]; ok && !root.OnVMStart(int(size)) {
		return 0
	}
	return 1
}

//go:wasmexport proxy_on_configure
func onConfigure(contextID, size uint32) uint32 {
	root, ok := roots[contextID]
	if !ok || !root.OnConfigure(int(size)) {
		return 0
	}
	return 1
}

//go:wasmexport proxy_on_tick
func onTick(contextID uint32) {
	if root, ok := roots[contextID]; ok {
		root.OnTick()
	}
}

//go:wasmexport proxy_on_request_headers
func onRequestHeaders(contextID, numHeaders, endOfStream uint32) uint32 {
	if s, ok := streams[contextID]; ok {
		return uint32(s.OnRequestHeaders(int(numHeaders), endOfStream != 0))
	}
	return uint32(Continue)
}

//go:wasmexport proxy_on_request_body
func onRequestBody(contextID, size, endOfStream uint32) uint32 {
	if s, ok := streams[contextID]; ok {
		return uint32(s.OnRequestBody(int(size), endOfStream != 0))
	}
	return uint32(Continue)
}

//go:wasmexport proxy_on_response_headers
func onResponseHeaders(contextID, numHeaders, endOfStream uint32) uint32 {
	if s, ok := streams[contextID]; ok {
		return uint32(s.OnResponseHeaders(int(numHeaders), endOfStream != 0))
	}
	return uint32(Continue)
}

//go:wasmexport proxy_on_response_body
func onResponseBody(contextID, size, endOfStream uint32) uint32 {
	if s, ok := streams[contextID]; ok {
		return uint32(s.OnResponseBody(int(size), endOfStream != 0))
	}
	return uint32(Continue)
}

//go:wasmexport proxy_on_done
func onDone(contextID uint32) uint32 {
	if s, ok := streams[contextID]; ok {
		s.OnDone()
	}
	return 1
}

//go:wasmexport proxy_on_delete
func onDelete(contextID uint32) {
	delete(streams, contextID)
	delete(roots, contextID)
}
