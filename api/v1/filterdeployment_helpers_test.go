package v1

import (
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
)

func TestDecodeConfig(t *testing.T) {
	cases := []struct {
		name     string
		raw      string // JSON; empty means no config
		wantType string
		want     string
		wantErr  string
	}{
		{name: "absent", wantType: StringValueType},
		{name: "plain string", raw: `"world"`, wantType: StringValueType, want: "world"},
		{name: "StringValue", raw: `{"@type":"` + StringValueType + `","value":"world"}`, wantType: StringValueType, want: "world"},
		{name: "StringValue without value", raw: `{"@type":"` + StringValueType + `"}`, wantType: StringValueType},
		{name: "BytesValue", raw: `{"@type":"` + BytesValueType + `","value":"aGVsbG8="}`, wantType: BytesValueType, want: "hello"},
		{name: "Struct as JSON", raw: `{"@type":"` + StructType + `","value":{"b":1,"a":"x"}}`, wantType: StructType, want: `{"a":"x","b":1}`},
		{name: "number", raw: `42`, wantErr: "must be a string or an object"},
		{name: "plain object as JSON", raw: `{"value":"x","header":{"name":"hello","n":2}}`, wantType: StringValueType, want: `{"header":{"n":2,"name":"hello"},"value":"x"}`},
		{name: "empty plain object", raw: `{}`, wantType: StringValueType, want: `{}`},
		{name: "plain object over the cap", raw: `{"k":"` + strings.Repeat("a", MaxConfigBytes) + `"}`, wantErr: "more than the 262144 allowed"},
		{name: "@type not a string", raw: `{"@type":1,"value":"x"}`, wantErr: `"@type" must be a type URL string`},
		{name: "unknown type", raw: `{"@type":"type.googleapis.com/x.Y","value":"x"}`, wantErr: `unsupported "@type"`},
		{name: "extra key", raw: `{"@type":"` + StringValueType + `","value":"x","z":1}`, wantErr: `unknown key "z"`},
		{name: "bad base64", raw: `{"@type":"` + BytesValueType + `","value":"!!"}`, wantErr: "must be base64"},
		{name: "string value not string", raw: `{"@type":"` + StringValueType + `","value":1}`, wantErr: "must be a string"},
		{name: "struct value not object", raw: `{"@type":"` + StructType + `","value":"x"}`, wantErr: "must be an object"},
		{name: "string at the cap", raw: `"` + strings.Repeat("a", MaxConfigBytes) + `"`, wantType: StringValueType, want: strings.Repeat("a", MaxConfigBytes)},
		{name: "string over the cap", raw: `"` + strings.Repeat("a", MaxConfigBytes+1) + `"`, wantErr: "more than the 262144 allowed"},
		{name: "Struct over the cap", raw: `{"@type":"` + StructType + `","value":{"k":"` + strings.Repeat("a", MaxConfigBytes) + `"}}`, wantErr: "more than the 262144 allowed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := FilterSpec{}
			if tc.raw != "" {
				f.Config = &apiextensionsv1.JSON{Raw: []byte(tc.raw)}
			}
			got, err := f.DecodeConfig()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.TypeURL != tc.wantType || string(got.Value) != tc.want {
				t.Errorf("got (%s, %q), want (%s, %q)", got.TypeURL, got.Value, tc.wantType, tc.want)
			}
		})
	}
}

func TestWorkloadKindAndPatchContext(t *testing.T) {
	for in, want := range map[string]string{"": "Deployment", "deployment": "Deployment", "DAEMONSET": "DaemonSet", "StatefulSet": "StatefulSet", "Pod": ""} {
		got, err := (&IstioDeploymentSpec{Kind: in}).WorkloadKind()
		if got != want || (want == "") != (err != nil) {
			t.Errorf("WorkloadKind(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for in, want := range map[string]string{"": "SIDECAR_INBOUND", "Inbound": "SIDECAR_INBOUND", "outbound": "SIDECAR_OUTBOUND", "GATEWAY": "GATEWAY", "any": "ANY", "up": ""} {
		got, err := (&FilterSpec{PatchContext: in}).EnvoyPatchContext()
		if got != want || (want == "") != (err != nil) {
			t.Errorf("EnvoyPatchContext(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestModuleDigestHex(t *testing.T) {
	hex := strings.Repeat("0a", 32)
	if got, err := ModuleDigestHex("sha256:" + hex); err != nil || got != hex {
		t.Errorf("ModuleDigestHex(valid) = %q, %v", got, err)
	}
	for _, bad := range []string{"", hex, "sha512:" + hex, "sha256:" + strings.ToUpper(hex), "sha256:" + hex[:62], "sha256:" + hex + "00", "sha256:../" + hex[3:]} {
		if _, err := ModuleDigestHex(bad); err == nil {
			t.Errorf("ModuleDigestHex(%q) accepted", bad)
		}
	}
}
