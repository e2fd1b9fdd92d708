//go:build wasip1

// Command custom-header is the seed's filter: it adds the response header "hello: world!".
// Root id "add_header". The plugin configuration may choose another header as JSON:
//
//	{"name": "x-a", "value": "b"}
//
// An empty configuration keeps the default; anything else that is not such an object is
// rejected, so a typo fails validation instead of silently doing nothing.
//
// Build: GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o custom-header.wasm .
package main

import (
	"bytes"
	"encoding/json"
	"fmt"

	"wasme.io/wasme/examples/filters/internal/proxywasm"
)

// The Go toolchain requires a main function even for a c-shared (reactor) module.
func main() {}

func init() {
	proxywasm.RegisterRoot("add_header", func(uint32) proxywasm.RootContext {
		return &root{name: "hello", value: "world!"}
	})
}

type config struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

type root struct {
	proxywasm.DefaultRoot
	name, value string
}

func (r *root) OnConfigure(size int) bool {
	if size == 0 {
		return true
	}
	data, err := proxywasm.GetBuffer(proxywasm.PluginConfiguration)
	if err != nil {
		proxywasm.Log(proxywasm.LogError, "custom-header: reading configuration: "+err.Error())
		return false
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return true
	}
	c := config{Name: r.name, Value: r.value}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		proxywasm.Log(proxywasm.LogError, fmt.Sprintf("custom-header: configuration must be JSON like {\"name\":\"x-a\",\"value\":\"b\"}: %v", err))
		return false
	}
	if c.Name == "" {
		proxywasm.Log(proxywasm.LogError, "custom-header: configuration has an empty header name")
		return false
	}
	r.name, r.value = c.Name, c.Value
	return true
}

func (r *root) NewHTTPContext(uint32) proxywasm.HTTPContext {
	return &stream{root: r}
}

type stream struct {
	proxywasm.DefaultHTTP
	root *root
}

func (s *stream) OnResponseHeaders(int, bool) proxywasm.Action {
	if err := proxywasm.AddHeader(proxywasm.ResponseHeaders, s.root.name, s.root.value); err != nil {
		proxywasm.Log(proxywasm.LogError, "custom-header: adding header: "+err.Error())
	}
	return proxywasm.Continue
}
