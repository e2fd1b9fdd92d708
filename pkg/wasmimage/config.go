package wasmimage

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// RuntimeConfig is wasme's runtime-config.json (proto module.wasm.config.Runtime).
type RuntimeConfig struct {
	// Type is the runtime the filter targets, "envoy_proxy" for proxy-wasm.
	Type string
	// AbiVersions are the proxy-wasm ABI versions the filter supports.
	AbiVersions []string
	// RootIDs are the root context ids the filter registers; the first is the default.
	RootIDs []string
}

// DefaultRuntimeType is the type wasme writes when none is given.
const DefaultRuntimeType = "envoy_proxy"

type runtimeConfigJSON struct {
	Type        string   `json:"type,omitempty"`
	AbiVersions []string `json:"abiVersions,omitempty"`
	Config      *struct {
		RootIDs []string `json:"rootIds,omitempty"`
	} `json:"config,omitempty"`
}

// MarshalJSON writes the compact camelCase form the original wasme wrote (defaults omitted),
// so a config built here has the same bytes and digest as one built by wasme.
func (c RuntimeConfig) MarshalJSON() ([]byte, error) {
	j := runtimeConfigJSON{Type: c.Type, AbiVersions: c.AbiVersions}
	if len(c.RootIDs) > 0 {
		j.Config = &struct {
			RootIDs []string `json:"rootIds,omitempty"`
		}{c.RootIDs}
	}
	return json.Marshal(j)
}

// UnmarshalJSON accepts the camelCase and the proto field names, as the original's jsonpb did,
// and refuses unknown fields so that a typo (spec.md's "abi_version") is not silently ignored.
func (c *RuntimeConfig) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("runtime config: %w", err)
	}
	var out RuntimeConfig
	for k, v := range raw {
		var err error
		switch k {
		case "type":
			err = json.Unmarshal(v, &out.Type)
		case "abiVersions", "abi_versions":
			err = json.Unmarshal(v, &out.AbiVersions)
		case "config":
			var inner map[string]json.RawMessage
			if err = json.Unmarshal(v, &inner); err != nil {
				break
			}
			for ik, iv := range inner {
				switch ik {
				case "rootIds", "root_ids":
					err = json.Unmarshal(iv, &out.RootIDs)
				default:
					err = fmt.Errorf("unknown field config.%s", ik)
				}
				if err != nil {
					break
				}
			}
		default:
			err = fmt.Errorf("unknown field %q", k)
		}
		if err != nil {
			return fmt.Errorf("runtime config: field %s: %w", k, err)
		}
	}
	*c = out
	return nil
}

// ParseRuntimeConfig parses a runtime-config.json.
func ParseRuntimeConfig(b []byte) (RuntimeConfig, error) {
	var c RuntimeConfig
	if len(bytes.TrimSpace(b)) == 0 {
		return c, fmt.Errorf("runtime config: empty")
	}
	err := c.UnmarshalJSON(b)
	return c, err
}

// RootID is the default root id: the first one, or "".
func (c RuntimeConfig) RootID() string {
	if len(c.RootIDs) == 0 {
		return ""
	}
	return c.RootIDs[0]
}

func (c RuntimeConfig) withDefaults() RuntimeConfig {
	if c.Type == "" {
		c.Type = DefaultRuntimeType
	}
	return c
}

func (c RuntimeConfig) annotations() map[string]string {
	c = c.withDefaults()
	a := map[string]string{AnnotationRuntimeType: c.Type}
	if len(c.AbiVersions) > 0 {
		a[AnnotationABIVersion] = strings.Join(c.AbiVersions, ",")
	}
	return a
}
