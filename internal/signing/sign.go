package signing

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"google.golang.org/protobuf/encoding/protojson"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/registry/remote"
)

// The names cosign v3 writes and looks for (cosign's pkg/oci/remote and pkg/types).
const (
	// BundleMediaType is the artifact type of the referrer manifest and the media type of
	// its one layer, the bundle's JSON.
	BundleMediaType = "application/vnd.dev.sigstore.bundle.v0.3+json"
	// SignPredicateType is the predicate type of cosign's image signatures.
	SignPredicateType = "https://sigstore.dev/cosign/sign/v1"
	// InTotoPayloadType is the DSSE payload type of an in-toto statement.
	InTotoPayloadType = "application/vnd.in-toto+json"
	// annotations of the referrer manifest, as cosign writes them.
	annotationBundleContent   = "dev.sigstore.bundle.content"
	annotationPredicateType   = "dev.sigstore.bundle.predicateType"
	annotationCreated         = ocispec.AnnotationCreated
	inTotoStatementTypeV1     = "https://in-toto.io/Statement/v1"
	bundleContentDSSEEnvelope = "dsse-envelope"
)

// statement is the in-toto statement cosign signs for an image: its subject is the manifest
// digest, with no name, and an empty predicate.
type statement struct {
	Type          string          `json:"_type"`
	Subject       []subject       `json:"subject"`
	PredicateType string          `json:"predicateType"`
	Predicate     json.RawMessage `json:"predicate"`
}

type subject struct {
	Digest map[string]string `json:"digest"`
}

// Signed says what Sign wrote.
type Signed struct {
	// Subject is the manifest digest that was signed.
	Subject digest.Digest `json:"subject"`
	// Signature is the digest of the referrer manifest holding the bundle.
	Signature digest.Digest `json:"signature"`
	// KeyID is the ID of the signing key's public half.
	KeyID string `json:"keyId"`
	// Bundle is the Sigstore bundle's JSON.
	Bundle []byte `json:"-"`
}

// BundleFor signs the manifest digest d with signer and returns the Sigstore bundle's JSON,
// as cosign sign --key does (no transparency log entry, no timestamp: both need servers).
func BundleFor(d digest.Digest, signer crypto.Signer) ([]byte, error) {
	if err := d.Validate(); err != nil || d.Algorithm() != digest.SHA256 {
		return nil, fmt.Errorf("signing needs a sha256 manifest digest, not %q", d)
	}
	payload, err := json.Marshal(statement{
		Type:          inTotoStatementTypeV1,
		Subject:       []subject{{Digest: map[string]string{"sha256": d.Encoded()}}},
		PredicateType: SignPredicateType,
		Predicate:     json.RawMessage("{}"),
	})
	if err != nil {
		return nil, err
	}
	kp, err := newKeypair(signer)
	if err != nil {
		return nil, err
	}
	b, err := sign.Bundle(&sign.DSSEData{Data: payload, PayloadType: InTotoPayloadType}, kp, sign.BundleOptions{})
	if err != nil {
		return nil, fmt.Errorf("signing: %w", err)
	}
	return protojson.Marshal(b)
}

// Sign signs the image manifest subject of repo with signer and pushes the bundle as a
// referrer of it (through the referrers API, or the referrers tag where the registry has none,
// as oras-go and cosign both do).
func Sign(ctx context.Context, repo *remote.Repository, subject ocispec.Descriptor, signer crypto.Signer) (*Signed, error) {
	bundle, err := BundleFor(subject.Digest, signer)
	if err != nil {
		return nil, err
	}
	desc, err := Attach(ctx, repo, subject, bundle)
	if err != nil {
		return nil, err
	}
	id, err := KeyID(signer.Public())
	if err != nil {
		return nil, err
	}
	return &Signed{Subject: subject.Digest, Signature: desc.Digest, KeyID: id, Bundle: bundle}, nil
}

// Attach pushes bundle (a Sigstore bundle's JSON) as a referrer of subject, laid out as cosign
// lays it out: an OCI image manifest of artifact type BundleMediaType, the empty config, one
// layer of the bundle.
func Attach(ctx context.Context, repo *remote.Repository, subject ocispec.Descriptor, bundle []byte) (ocispec.Descriptor, error) {
	layer := ocispec.Descriptor{MediaType: BundleMediaType, Digest: digest.FromBytes(bundle), Size: int64(len(bundle))}
	if err := repo.Push(ctx, layer, bytes.NewReader(bundle)); err != nil && !isAlreadyExists(err) {
		return ocispec.Descriptor{}, fmt.Errorf("pushing the signature bundle: %w", err)
	}
	subj := ocispec.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size}
	desc, err := oras.PackManifest(ctx, repo, oras.PackManifestVersion1_1, BundleMediaType, oras.PackManifestOptions{
		Subject: &subj,
		Layers:  []ocispec.Descriptor{layer},
		ManifestAnnotations: map[string]string{
			annotationCreated:       time.Now().UTC().Format(time.RFC3339),
			annotationBundleContent: bundleContentDSSEEnvelope,
			annotationPredicateType: SignPredicateType,
		},
	})
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("pushing the signature manifest: %w", err)
	}
	return desc, nil
}

// keypair is the sign.Keypair of a loaded key (sigstore-go ships only an ephemeral one). The
// hint is cosign's: base64 of the SHA-256 of the public key's DER.
type keypair struct {
	signer crypto.Signer
	alg    signature.AlgorithmDetails
	hint   []byte
}

func newKeypair(s crypto.Signer) (*keypair, error) {
	alg, err := signature.GetDefaultAlgorithmDetails(s.Public())
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedKey, err)
	}
	der, err := x509.MarshalPKIXPublicKey(s.Public())
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedKey, err)
	}
	sum := sha256.Sum256(der)
	return &keypair{signer: s, alg: alg, hint: []byte(base64.StdEncoding.EncodeToString(sum[:]))}, nil
}

func (k *keypair) GetHashAlgorithm() protocommon.HashAlgorithm { return k.alg.GetProtoHashType() }
func (k *keypair) GetSigningAlgorithm() protocommon.PublicKeyDetails {
	return k.alg.GetSignatureAlgorithm()
}
func (k *keypair) GetHint() []byte                { return k.hint }
func (k *keypair) GetPublicKey() crypto.PublicKey { return k.signer.Public() }
func (k *keypair) GetKeyAlgorithm() string {
	switch k.alg.GetKeyType() {
	case signature.ECDSA:
		return "ECDSA"
	case signature.RSA:
		return "RSA"
	case signature.ED25519:
		return "ED25519"
	}
	return ""
}

func (k *keypair) GetPublicKeyPem() (string, error) {
	b, err := cryptoutils.MarshalPublicKeyToPEM(k.signer.Public())
	return string(b), err
}

// SignData hashes data with the algorithm's hash and signs the digest (pure Ed25519 signs the
// data itself), returning the signature and what was signed.
func (k *keypair) SignData(_ context.Context, data []byte) ([]byte, []byte, error) {
	h := k.alg.GetHashType()
	toSign := data
	if h != crypto.Hash(0) {
		hh := h.New()
		hh.Write(data)
		toSign = hh.Sum(nil)
	}
	sig, err := k.signer.Sign(rand.Reader, toSign, h)
	if err != nil {
		return nil, nil, err
	}
	return sig, toSign, nil
}
