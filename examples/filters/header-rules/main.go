//go:build wasip1

// Command header-rules is a filter driven by its JSON configuration (root id "header_rules"):
//
//	{
//	  "request":  {"x-team": "payments"},   // set on the request before the upstream sees it
//	  "response": {"x-served-by": "wasme"}, // set on the response
//	  "remove":   ["server"]                // removed from the response
//	}
//
// Unknown fields, empty header names and non-JSON input are rejected at configuration time.
package main

import (
	"bytes"
	"encoding/json"
	"strings"

	"wasme.io/wasme/examples/filters/internal/proxywasm"
)

func main() {}

func init() {
	proxywasm.RegisterRoot("header_rules", func(uint32) proxywasm.RootContext { return &root{} })
}

type rules struct {
	Request  map[string]string `json:"request"`
	Response map[string]string `json:"response"`
	Remove   []string          `json:"remove"`
}

type root struct {
	proxywasm.DefaultRoot
	rules rules
}

func (r *root) OnConfigure(int) bool {
	data, err := proxywasm.GetBuffer(proxywasm.PluginConfiguration)
	if err != nil || len(bytes.TrimSpace(data)) == 0 {
		proxywasm.Log(proxywasm.LogError, "header-rules: a JSON configuration is required")
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var c rules
	if err := dec.Decode(&c); err != nil {
		proxywasm.Log(proxywasm.LogError, "header-rules: bad configuration: "+err.Error())
		return false
	}
	for _, m := range []map[string]string{c.Request, c.Response} {
		for k := range m {
			if strings.TrimSpace(k) == "" {
				proxywasm.Log(proxywasm.LogError, "header-rules: empty header name")
				return false
			}
		}
	}
	r.rules = c
	return true
}

func (r *root) NewHTTPContext(uint32) proxywasm.HTTPContext { return &stream{rules: &r.rules} }

type stream struct {
	proxywasm.DefaultHTTP
	rules *rules
}

func (s *stream) OnRequestHeaders(int, bool) proxywasm.Action {
	for k, v := range s.rules.Request {
		_ = proxywasm.ReplaceHeader(proxywasm.RequestHeaders, k, v)
	}
	return proxywasm.Continue
}

func (s *stream) OnResponseHeaders(int, bool) proxywasm.Action {
	for _, k := range s.rules.Remove {
		_ = proxywasm.RemoveHeader(proxywasm.ResponseHeaders, k)
	}
	for k, v := range s.rules.Response {
		_ = proxywasm.ReplaceHeader(proxywasm.ResponseHeaders, k, v)
	}
	return proxywasm.Continue
}
