//go:build wasip1

// Command deny-path answers requests under configured path prefixes itself, with a local
// response, so they never reach the upstream (root id "deny_path"):
//
//	{"prefixes": ["/admin"], "status": 403, "body": "forbidden\n"}
//
// status defaults to 403 and body to "denied by wasme\n".
package main

import (
	"bytes"
	"encoding/json"
	"strings"

	"wasme.io/wasme/examples/filters/internal/proxywasm"
)

func main() {}

func init() {
	proxywasm.RegisterRoot("deny_path", func(uint32) proxywasm.RootContext {
		return &root{status: 403, body: "denied by wasme\n"}
	})
}

type root struct {
	proxywasm.DefaultRoot
	prefixes []string
	status   uint32
	body     string
}

func (r *root) OnConfigure(int) bool {
	data, _ := proxywasm.GetBuffer(proxywasm.PluginConfiguration)
	var c struct {
		Prefixes []string `json:"prefixes"`
		Status   uint32   `json:"status"`
		Body     *string  `json:"body"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil || len(c.Prefixes) == 0 {
		proxywasm.Log(proxywasm.LogError, `deny-path: configuration must be JSON like {"prefixes":["/admin"]}`)
		return false
	}
	if c.Status != 0 {
		if c.Status < 200 || c.Status > 599 {
			proxywasm.Log(proxywasm.LogError, "deny-path: status must be between 200 and 599")
			return false
		}
		r.status = c.Status
	}
	if c.Body != nil {
		r.body = *c.Body
	}
	r.prefixes = c.Prefixes
	return true
}

func (r *root) NewHTTPContext(uint32) proxywasm.HTTPContext { return &stream{root: r} }

type stream struct {
	proxywasm.DefaultHTTP
	root *root
}

func (s *stream) OnRequestHeaders(int, bool) proxywasm.Action {
	path, err := proxywasm.GetHeader(proxywasm.RequestHeaders, ":path")
	if err != nil {
		return proxywasm.Continue
	}
	for _, p := range s.root.prefixes {
		if strings.HasPrefix(path, p) {
			err := proxywasm.SendLocalResponse(s.root.status, "denied_by_deny_path", []byte(s.root.body),
				[][2]string{{"content-type", "text/plain"}})
			if err != nil {
				proxywasm.Log(proxywasm.LogError, "deny-path: "+err.Error())
				return proxywasm.Continue
			}
			return proxywasm.Pause
		}
	}
	return proxywasm.Continue
}
