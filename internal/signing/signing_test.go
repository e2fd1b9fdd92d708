package signing_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"google.golang.org/protobuf/encoding/protojson"
	"oras.land/oras-go/v2/registry/remote"

	"wasme.io/wasme/internal/signing"
	"wasme.io/wasme/internal/testing/registry"
	"wasme.io/wasme/pkg/wasmimage"
)

// image pushes a small module under ref through the proxy and returns the repository
// client and the manifest's descriptor.
func image(t *testing.T, host, name, body string) (*remote.Repository, ocispec.Descriptor) {
	t.Helper()
	ctx := context.Background()
	ref := host + "/" + name + ":v1"
	module := append([]byte("\x00asm\x01\x00\x00\x00"), body...)
	if _, err := wasmimage.Push(ctx, ref, module, wasmimage.RuntimeConfig{AbiVersions: []string{"v0.2.1"}, RootIDs: []string{"r"}}, wasmimage.WithPlainHTTP(true)); err != nil {
		t.Fatal(err)
	}
	repo, desc, err := wasmimage.ResolveDescriptor(ctx, ref, wasmimage.WithPlainHTTP(true))
	if err != nil {
		t.Fatal(err)
	}
	return repo, desc
}

func newKey(t *testing.T) (crypto.Signer, signing.PublicKey) {
	t.Helper()
	privPEM, pubPEM, err := signing.GenerateKeyPair([]byte("pw"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := signing.LoadPrivateKey(privPEM, []byte("pw"))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := signing.ParsePublicKeys(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	return s, keys[0]
}

// TestVerifyBadSignatures: each way a signature can be wrong, against the real registry;
// each is refused with a reason naming it, and a good signature next to them still verifies.
func TestVerifyBadSignatures(t *testing.T) {
	reg := registry.StartT(t, registry.Options{})
	proxy := registry.NewProxy(t, reg)
	ctx := context.Background()
	signer, pub := newKey(t)
	_, otherPub := newKey(t)

	t.Run("unsigned", func(t *testing.T) {
		repo, desc := image(t, proxy.Host, "bad/unsigned", "u")
		_, err := signing.Verify(ctx, repo, desc, signing.Policy{Keys: []signing.PublicKey{pub}})
		if !errors.Is(err, signing.ErrUnsigned) {
			t.Fatalf("err = %v, want ErrUnsigned", err)
		}
	})
	t.Run("good", func(t *testing.T) {
		repo, desc := image(t, proxy.Host, "bad/good", "g")
		s, err := signing.Sign(ctx, repo, desc, signer)
		if err != nil {
			t.Fatal(err)
		}
		v, err := signing.Verify(ctx, repo, desc, signing.Policy{Keys: []signing.PublicKey{otherPub, pub}})
		if err != nil {
			t.Fatal(err)
		}
		if v.Digest != desc.Digest || v.Signer != pub.ID || v.Signature != s.Signature {
			t.Errorf("verified %+v, want %s by %s in %s", v, desc.Digest, pub.ID, s.Signature)
		}
	})
	t.Run("another key", func(t *testing.T) {
		repo, desc := image(t, proxy.Host, "bad/otherkey", "o")
		if _, err := signing.Sign(ctx, repo, desc, signer); err != nil {
			t.Fatal(err)
		}
		_, err := signing.Verify(ctx, repo, desc, signing.Policy{Keys: []signing.PublicKey{otherPub}})
		if !errors.Is(err, signing.ErrNotVerified) || !strings.Contains(err.Error(), otherPub.ID) {
			t.Fatalf("err = %v, want ErrNotVerified naming the key", err)
		}
	})
	t.Run("signature of another digest", func(t *testing.T) {
		repo, desc := image(t, proxy.Host, "bad/otherdigest", "d1")
		_, descB := image(t, proxy.Host, "bad/otherdigest-b", "d2")
		b, err := signing.BundleFor(descB.Digest, signer)
		if err != nil {
			t.Fatal(err)
		}
		// Copied under this image's digest: the statement still names the other one.
		if _, err := signing.Attach(ctx, repo, desc, b); err != nil {
			t.Fatal(err)
		}
		_, err = signing.Verify(ctx, repo, desc, signing.Policy{Keys: []signing.PublicKey{pub}})
		if !errors.Is(err, signing.ErrNotVerified) || !strings.Contains(err.Error(), "digest") {
			t.Fatalf("err = %v, want ErrNotVerified about the digest", err)
		}
	})
	t.Run("tampered signature", func(t *testing.T) {
		repo, desc := image(t, proxy.Host, "bad/tampered", "t")
		b, err := signing.BundleFor(desc.Digest, signer)
		if err != nil {
			t.Fatal(err)
		}
		// Change one byte of the DSSE signature and push the result as a new layer.
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		env := m["dsseEnvelope"].(map[string]any)
		sig := env["signatures"].([]any)[0].(map[string]any)
		s := []byte(sig["sig"].(string))
		s[10] ^= 'A' ^ 'B'
		if s[10] == '+' || s[10] == '/' || s[10] == '=' {
			s[10] = 'Q'
		}
		sig["sig"] = string(s)
		tampered, _ := json.Marshal(m)
		if _, err := signing.Attach(ctx, repo, desc, tampered); err != nil {
			t.Fatal(err)
		}
		_, err = signing.Verify(ctx, repo, desc, signing.Policy{Keys: []signing.PublicKey{pub}})
		if !errors.Is(err, signing.ErrNotVerified) || !strings.Contains(err.Error(), "signature") {
			t.Fatalf("err = %v, want ErrNotVerified about the signature", err)
		}
	})
	t.Run("signature layer changed in the registry", func(t *testing.T) {
		repo, desc := image(t, proxy.Host, "bad/inplace", "i")
		s, err := signing.Sign(ctx, repo, desc, signer)
		if err != nil {
			t.Fatal(err)
		}
		layer := digest.FromBytes(s.Bundle)
		// The registry (or one on the path) serves other bytes for the bundle's digest.
		proxy.SetModify(func(r *http.Request, resp *http.Response) error {
			if strings.HasSuffix(r.URL.Path, "/blobs/"+layer.String()) && resp.StatusCode == http.StatusOK {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				body[len(body)/2] ^= 1
				resp.Body = io.NopCloser(bytes.NewReader(body))
			}
			return nil
		})
		defer proxy.SetModify(nil)
		_, err = signing.Verify(ctx, repo, desc, signing.Policy{Keys: []signing.PublicKey{pub}})
		if !errors.Is(err, signing.ErrNotVerified) || !strings.Contains(err.Error(), "tampered") {
			t.Fatalf("err = %v, want ErrNotVerified naming the tampered layer", err)
		}
	})
	t.Run("attestation is not a signature", func(t *testing.T) {
		repo, desc := image(t, proxy.Host, "bad/attestation", "a")
		stmt, _ := json.Marshal(map[string]any{
			"_type":         "https://in-toto.io/Statement/v1",
			"subject":       []any{map[string]any{"digest": map[string]string{"sha256": desc.Digest.Encoded()}}},
			"predicateType": "https://spdx.dev/Document",
			"predicate":     map[string]any{},
		})
		b := bundleOf(t, stmt, signer, nil)
		if _, err := signing.Attach(ctx, repo, desc, b); err != nil {
			t.Fatal(err)
		}
		_, err := signing.Verify(ctx, repo, desc, signing.Policy{Keys: []signing.PublicKey{pub}})
		if err == nil || !strings.Contains(err.Error(), "predicate type") {
			t.Fatalf("err = %v, want a refusal of the predicate type", err)
		}
	})
}

// TestMalformedKeys: key material that cannot be used is refused with ErrMalformedKey (or a
// password error), never a panic.
func TestMalformedKeys(t *testing.T) {
	privPEM, pubPEM, err := signing.GenerateKeyPair([]byte("pw"))
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"empty":           nil,
		"not PEM":         []byte("ssh-ed25519 AAAA..."),
		"a private key":   privPEM,
		"truncated":       pubPEM[:len(pubPEM)/2],
		"garbage in PEM":  []byte("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
		"trailing text":   append(append([]byte{}, pubPEM...), "junk"...),
		"a certificate":   []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
		"too large":       bytes.Repeat(pubPEM, signing.MaxKeyBytes/len(pubPEM)+1),
		"too many keys":   bytes.Repeat(pubPEM, signing.MaxKeys+1),
		"weak RSA (1024)": rsaPub(t),
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := signing.ParsePublicKeys(data); !errors.Is(err, signing.ErrMalformedKey) {
				t.Fatalf("err = %v, want ErrMalformedKey", err)
			}
		})
	}
	if keys, err := signing.ParsePublicKeys(append(append([]byte{}, pubPEM...), pubPEM...)); err != nil || len(keys) != 2 {
		t.Errorf("two keys: %v, %v", keys, err)
	}
	if _, err := signing.LoadPrivateKey(privPEM, []byte("wrong")); err == nil || !strings.Contains(err.Error(), "password") {
		t.Errorf("wrong password: %v", err)
	}
	if _, err := signing.LoadPrivateKey(pubPEM, []byte("pw")); !errors.Is(err, signing.ErrMalformedKey) {
		t.Errorf("public key as private: %v", err)
	}
}

func rsaPub(t *testing.T) []byte {
	t.Helper()
	// A 1024-bit RSA key, which sigstore refuses as too weak.
	k, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// bundleOf signs statement as a DSSE envelope with s; with a certificate provider the bundle
// carries the certificate (keyless) instead of the key's hint.
func bundleOf(t *testing.T, statement []byte, s crypto.Signer, cp sign.CertificateProvider) []byte {
	t.Helper()
	var kp sign.Keypair
	if s != nil {
		kp = signerKeypair(t, s)
	} else {
		var err error
		if kp, err = sign.NewEphemeralKeypair(nil); err != nil {
			t.Fatal(err)
		}
	}
	b, err := sign.Bundle(&sign.DSSEData{Data: statement, PayloadType: signing.InTotoPayloadType}, kp, sign.BundleOptions{CertificateProvider: cp})
	if err != nil {
		t.Fatal(err)
	}
	out, err := protojson.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// signerKeypair wraps s as a sign.Keypair, to sign statements BundleFor would not make.
func signerKeypair(t *testing.T, s crypto.Signer) sign.Keypair {
	t.Helper()
	return &testKeypair{s: s}
}

type testKeypair struct{ s crypto.Signer }

// testKeypair is sigstore-go's EphemeralKeypair with a given key: ECDSA P-256, SHA-256.
func (k *testKeypair) GetHashAlgorithm() protocommon.HashAlgorithm {
	return protocommon.HashAlgorithm_SHA2_256
}
func (k *testKeypair) GetSigningAlgorithm() protocommon.PublicKeyDetails {
	return protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256
}
func (k *testKeypair) GetHint() []byte                { return []byte("hint") }
func (k *testKeypair) GetKeyAlgorithm() string        { return "ECDSA" }
func (k *testKeypair) GetPublicKey() crypto.PublicKey { return k.s.Public() }
func (k *testKeypair) GetPublicKeyPem() (string, error) {
	der, err := x509.MarshalPKIXPublicKey(k.s.Public())
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), nil
}
func (k *testKeypair) SignData(_ context.Context, data []byte) ([]byte, []byte, error) {
	sum := sha256.Sum256(data)
	d := sum[:]
	sig, err := k.s.Sign(rand.Reader, d, crypto.SHA256)
	return sig, d, err
}

// TestKeylessOffline verifies a keyless bundle (a certificate for an identity, from a CA made
// here) against a trusted root file holding that CA, with no server asked; another identity,
// another issuer and a CA not in the root are refused.
func TestKeylessOffline(t *testing.T) {
	reg := registry.StartT(t, registry.Options{})
	ctx := context.Background()
	ca, caKey := makeCA(t, "test fulcio")
	otherCA, otherKey := makeCA(t, "other fulcio")
	dir := t.TempDir()
	rootPath := filepath.Join(dir, "trusted_root.json")
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01,
		[]root.CertificateAuthority{&root.FulcioCertificateAuthority{Root: ca, ValidityPeriodStart: ca.NotBefore, ValidityPeriodEnd: ca.NotAfter, URI: "https://fulcio.example.com"}},
		nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	j, err := tr.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rootPath, j, 0o644); err != nil {
		t.Fatal(err)
	}
	// Read back from the file, as wasme verify --trusted-root does.
	tr, err = root.NewTrustedRootFromPath(rootPath)
	if err != nil {
		t.Fatal(err)
	}
	const who, issuer = "builder@example.com", "https://issuer.example.com"
	repo, desc := image(t, reg.Host, "keyless/f", "k")
	stmt := statementFor(t, desc.Digest)
	if _, err := signing.Attach(ctx, repo, desc, bundleOf(t, stmt, nil, certProvider{ca, caKey, who, issuer})); err != nil {
		t.Fatal(err)
	}
	ok := signing.Policy{TrustedRoot: tr, Identities: []signing.Identity{{Subject: who, Issuer: issuer}}}
	v, err := signing.Verify(ctx, repo, desc, ok)
	if err != nil {
		t.Fatal(err)
	}
	if v.Signer != who+" ("+issuer+")" || v.Digest != desc.Digest {
		t.Errorf("verified %+v", v)
	}
	for name, p := range map[string]signing.Policy{
		"another identity": {TrustedRoot: tr, Identities: []signing.Identity{{Subject: "mallory@example.com", Issuer: issuer}}},
		"another issuer":   {TrustedRoot: tr, Identities: []signing.Identity{{Subject: who, Issuer: "https://other.example.com"}}},
		"keys only":        {Keys: []signing.PublicKey{func() signing.PublicKey { _, k := newKey(t); return k }()}},
	} {
		if _, err := signing.Verify(ctx, repo, desc, p); !errors.Is(err, signing.ErrNotVerified) {
			t.Errorf("%s: err = %v, want ErrNotVerified", name, err)
		}
	}
	// A certificate from a CA the root does not hold.
	repo2, desc2 := image(t, reg.Host, "keyless/g", "k2")
	if _, err := signing.Attach(ctx, repo2, desc2, bundleOf(t, statementFor(t, desc2.Digest), nil, certProvider{otherCA, otherKey, who, issuer})); err != nil {
		t.Fatal(err)
	}
	if _, err := signing.Verify(ctx, repo2, desc2, ok); !errors.Is(err, signing.ErrNotVerified) {
		t.Errorf("untrusted CA: err = %v, want ErrNotVerified", err)
	}
}

func statementFor(t *testing.T, d digest.Digest) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{
		"_type":         "https://in-toto.io/Statement/v1",
		"subject":       []any{map[string]any{"digest": map[string]string{"sha256": d.Encoded()}}},
		"predicateType": signing.SignPredicateType,
		"predicate":     map[string]any{},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func makeCA(t *testing.T, cn string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

// certProvider is a Fulcio stand-in in the test: it issues a short-lived code-signing
// certificate for the keypair with an email SAN and the OIDC issuer extension, as Fulcio does.
type certProvider struct {
	ca            *x509.Certificate
	key           *ecdsa.PrivateKey
	email, issuer string
}

func (c certProvider) GetCertificate(_ context.Context, kp sign.Keypair, _ *sign.CertificateProviderOptions) ([]byte, error) {
	issuerExt, err := asn1.MarshalWithParams(c.issuer, "utf8")
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:   big.NewInt(time.Now().UnixNano()),
		NotBefore:      time.Now().Add(-time.Minute),
		NotAfter:       time.Now().Add(10 * time.Minute),
		KeyUsage:       x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		EmailAddresses: []string{c.email},
		URIs:           []*url.URL{},
		ExtraExtensions: []pkix.Extension{
			{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 8}, Value: issuerExt},
		},
	}
	return x509.CreateCertificate(rand.Reader, tmpl, c.ca, kp.GetPublicKey(), c.key)
}
