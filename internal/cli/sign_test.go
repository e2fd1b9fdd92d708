package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"wasme.io/wasme/internal/signing"
	"wasme.io/wasme/internal/testing/registry"
	"wasme.io/wasme/internal/testing/tools"
	"wasme.io/wasme/pkg/wasmimage"
)

// cosignBin is the pinned cosign CLI (hack/tools/cosign); a test that needs it fails when it
// cannot be had, never skips.
func cosignBin(t *testing.T) string {
	t.Helper()
	bin, err := tools.Cosign(os.Stderr)
	if err != nil {
		t.Fatalf("the interop tests need the pinned cosign (make tools, or %s): %v", tools.CosignEnv, err)
	}
	return bin
}

// runCosign runs the real cosign CLI offline: no TUF, Rekor or Fulcio is reachable here, so
// signing makes no transparency log entry and verification by key needs none.
func runCosign(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(cosignBin(t), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "COSIGN_PASSWORD=interop-pw", "TUF_ROOT="+filepath.Join(dir, ".sigstore"), "COSIGN_EXPERIMENTAL=0")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// pushModule pushes a small module under ref and returns its manifest digest.
func pushModule(t *testing.T, reg *registry.Registry, ref string, body string) string {
	t.Helper()
	module := append([]byte("\x00asm\x01\x00\x00\x00"), []byte(body)...)
	res, err := wasmimage.Push(context.Background(), ref, module, wasmimage.RuntimeConfig{AbiVersions: []string{"v0.2.1"}, RootIDs: []string{"r"}},
		wasmimage.WithCAPEM(reg.CAPEM))
	if err != nil {
		t.Fatal(err)
	}
	return res.ManifestDigest.String()
}

// TestSignInterop signs with each tool and verifies with the other, with keys each made,
// against the real registry over verified TLS: cosign v3's default format (a Sigstore bundle
// as an OCI referrer) is what both write and read.
func TestSignInterop(t *testing.T) {
	isolate(t)
	t.Setenv(keyPasswordEnv, "interop-pw")
	reg := registry.StartT(t, registry.Options{TLS: true})
	dir := t.TempDir()

	// One key pair from each tool.
	mustRun(t, "keygen", "--output-key-prefix", filepath.Join(dir, "wasme"))
	if out, err := runCosign(t, dir, "generate-key-pair", "--output-key-prefix", "cosign"); err != nil {
		t.Fatalf("cosign generate-key-pair: %v: %s", err, out)
	}
	for _, f := range []string{"wasme.key", "wasme.pub", "cosign.key", "cosign.pub"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	cosignReg := []string{"--registry-cacert", reg.CAFile}
	wasmeReg := []string{"--ca-file", reg.CAFile}

	cases := []struct {
		name, signer, key, verifier string
	}{
		{"wasme signs with its key, cosign verifies", "wasme", "wasme", "cosign"},
		{"wasme signs with cosign's key, cosign verifies", "wasme", "cosign", "cosign"},
		{"cosign signs with its key, wasme verifies", "cosign", "cosign", "wasme"},
		{"cosign signs with wasme's key, wasme verifies", "cosign", "wasme", "wasme"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ref := reg.Host + "/interop/f" + string(rune('a'+i)) + ":v1"
			d := pushModule(t, reg, ref, c.name)
			priv, pub := filepath.Join(dir, c.key+".key"), filepath.Join(dir, c.key+".pub")
			other := filepath.Join(dir, map[string]string{"wasme": "cosign", "cosign": "wasme"}[c.key]+".pub")

			// Before signing, neither tool verifies.
			if _, errOut, code := wasme(t, "", append([]string{"verify", ref, "--key", pub}, wasmeReg...)...); code == 0 || !strings.Contains(errOut, "no Sigstore signature") {
				t.Fatalf("unsigned image: wasme verify exit %d: %s", code, errOut)
			}

			switch c.signer {
			case "wasme":
				out := mustRun(t, append([]string{"sign", ref, "--key", priv, "-o", "json"}, wasmeReg...)...)
				var s signedInfo
				if err := json.Unmarshal([]byte(out), &s); err != nil {
					t.Fatalf("sign -o json: %v: %s", err, out)
				}
				if s.Digest != d {
					t.Fatalf("signed %s, pushed %s", s.Digest, d)
				}
			case "cosign":
				if out, err := runCosign(t, dir, append([]string{"sign", "--key", priv, "--tlog-upload=false", "--use-signing-config=false", "-y", ref}, cosignReg...)...); err != nil {
					t.Fatalf("cosign sign: %v: %s", err, out)
				}
			}

			switch c.verifier {
			case "cosign":
				out, err := runCosign(t, dir, append([]string{"verify", "--key", pub, "--insecure-ignore-tlog=true", ref}, cosignReg...)...)
				if err != nil {
					t.Fatalf("cosign verify: %v: %s", err, out)
				}
				if !strings.Contains(out, strings.TrimPrefix(d, "sha256:")) {
					t.Errorf("cosign verify does not name the digest %s: %s", d, out)
				}
				// The other key does not verify it.
				if out, err := runCosign(t, dir, append([]string{"verify", "--key", other, "--insecure-ignore-tlog=true", ref}, cosignReg...)...); err == nil {
					t.Errorf("cosign verify with the other key passed: %s", out)
				}
			case "wasme":
				out := mustRun(t, append([]string{"verify", ref, "--key", pub, "-o", "json"}, wasmeReg...)...)
				var v signedInfo
				if err := json.Unmarshal([]byte(out), &v); err != nil {
					t.Fatalf("verify -o json: %v: %s", err, out)
				}
				keys, err := signing.ParsePublicKeys(mustRead(t, pub))
				if err != nil {
					t.Fatal(err)
				}
				if v.Digest != d || v.Signer != keys[0].ID {
					t.Errorf("verified %+v, want digest %s signer %s", v, d, keys[0].ID)
				}
				if _, errOut, code := wasme(t, "", append([]string{"verify", ref, "--key", other}, wasmeReg...)...); code == 0 || !strings.Contains(errOut, "no signature verifies") {
					t.Errorf("wasme verify with the other key: exit %d: %s", code, errOut)
				}
			}
		})
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
