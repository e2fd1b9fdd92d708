package signing

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/signature"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry/remote"
)

// Bounds on what a registry may make the verifier read: referrers are chosen by whoever can
// push to the repository.
const (
	// MaxReferrers is the most signature referrers of one image looked at.
	MaxReferrers = 32
	// maxManifestBytes and MaxBundleBytes bound a referrer's manifest and its bundle layer.
	maxManifestBytes = 64 << 10
	MaxBundleBytes   = 1 << 20
)

// Errors a caller tells apart (errors.Is).
var (
	// ErrUnsigned: the image has no Sigstore bundle referrer at all.
	ErrUnsigned = errors.New("not signed")
	// ErrNotVerified: bundles are attached, none verifies under the policy.
	ErrNotVerified = errors.New("no signature verifies")
)

// Identity is a keyless signer: the certificate's subject (SAN: an email or URI) and the
// OIDC issuer that vouched for it, as cosign's --certificate-identity and
// --certificate-oidc-issuer. Regexps are Go syntax, anchored by the caller if wanted.
type Identity struct {
	Subject, SubjectRegexp string
	Issuer, IssuerRegexp   string
}

// Policy says whose signature counts: one of Keys, or (with TrustedRoot) a certificate that
// chains to its CAs and matches one of Identities.
type Policy struct {
	Keys []PublicKey
	// TrustedRoot is a Sigstore trusted root (trusted_root.json): the CAs, and the
	// transparency logs and timestamp authorities whose evidence bundles may carry.
	TrustedRoot *root.TrustedRoot
	Identities  []Identity
}

// Verified says who signed which digest.
type Verified struct {
	// Digest is the manifest digest the signature covers (the one verified against).
	Digest digest.Digest `json:"digest"`
	// Signer is the key ID (sha256:<hex of the public key's DER>) or, keyless, the
	// certificate's subject and issuer ("subject (issuer)").
	Signer string `json:"signer"`
	// Signature is the digest of the referrer manifest whose bundle verified.
	Signature digest.Digest `json:"signature"`
}

// Verify looks for a Sigstore bundle referrer of subject in repo that verifies under p. It
// reads at most MaxReferrers referrers, each bounded in size, and verifies each bundle
// against subject's digest: a bundle copied from another image names the other digest and
// does not verify.
func Verify(ctx context.Context, repo *remote.Repository, subject ocispec.Descriptor, p Policy) (*Verified, error) {
	if len(p.Keys) == 0 && (p.TrustedRoot == nil || len(p.Identities) == 0) {
		return nil, errors.New("verification needs a public key, or a trusted root and an identity")
	}
	var refs []ocispec.Descriptor
	more := false
	err := repo.Referrers(ctx, subject, "", func(page []ocispec.Descriptor) error {
		for _, d := range page {
			if !isBundleType(d.ArtifactType) {
				continue
			}
			if len(refs) == MaxReferrers {
				more = true
				return errStop
			}
			refs = append(refs, d)
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return nil, fmt.Errorf("listing the signatures of %s: %w", subject.Digest, err)
	}
	if len(refs) == 0 {
		return nil, fmt.Errorf("%w: %s has no Sigstore signature (no referrer of artifact type %s)", ErrUnsigned, subject.Digest, BundleMediaType)
	}
	// Newest first: a fresh signature is the likeliest to be by a current key.
	var reasons []string
	for i := len(refs) - 1; i >= 0; i-- {
		v, err := verifyReferrer(ctx, repo, subject, refs[i], p)
		if err == nil {
			return v, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		reasons = append(reasons, fmt.Sprintf("%s: %v", refs[i].Digest, err))
	}
	suffix := ""
	if more {
		suffix = fmt.Sprintf(" (only the first %d looked at)", MaxReferrers)
	}
	return nil, fmt.Errorf("%w: none of the %d signatures of %s verifies with %s%s: %s", ErrNotVerified, len(refs), subject.Digest,
		p.describe(), suffix, strings.Join(reasons, "; "))
}

var errStop = errors.New("enough referrers")

func isBundleType(t string) bool {
	return t == BundleMediaType || strings.HasPrefix(t, "application/vnd.dev.sigstore.bundle+json;version=")
}

func (p Policy) describe() string {
	var parts []string
	for _, k := range p.Keys {
		parts = append(parts, "key "+k.ID)
	}
	for _, id := range p.Identities {
		parts = append(parts, "identity "+id.String())
	}
	if len(parts) > 4 {
		parts = append(parts[:4], fmt.Sprintf("%d more", len(parts)-4))
	}
	return strings.Join(parts, ", ")
}

func (id Identity) String() string {
	s, i := id.Subject, id.Issuer
	if s == "" {
		s = "~" + id.SubjectRegexp
	}
	if i == "" {
		i = "~" + id.IssuerRegexp
	}
	return s + " (" + i + ")"
}

// verifyReferrer reads one referrer's manifest and bundle and verifies the bundle.
func verifyReferrer(ctx context.Context, repo *remote.Repository, subject, ref ocispec.Descriptor, p Policy) (*Verified, error) {
	if ref.Size > maxManifestBytes {
		return nil, fmt.Errorf("signature manifest of %d bytes, more than %d", ref.Size, maxManifestBytes)
	}
	raw, err := fetchAll(ctx, repo.Manifests(), ref, maxManifestBytes)
	if err != nil {
		return nil, fmt.Errorf("reading the signature manifest: %w", err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("signature manifest is not JSON: %w", err)
	}
	if m.Subject == nil || m.Subject.Digest != subject.Digest {
		return nil, errors.New("signature manifest's subject is another image")
	}
	var layer *ocispec.Descriptor
	for i := range m.Layers {
		if isBundleType(m.Layers[i].MediaType) {
			layer = &m.Layers[i]
			break
		}
	}
	if layer == nil {
		return nil, errors.New("signature manifest has no bundle layer")
	}
	if layer.Size > MaxBundleBytes {
		return nil, fmt.Errorf("bundle of %d bytes, more than %d", layer.Size, MaxBundleBytes)
	}
	data, err := fetchAll(ctx, repo.Blobs(), *layer, MaxBundleBytes)
	if err != nil {
		return nil, fmt.Errorf("reading the bundle: %w", err)
	}
	v, err := VerifyBundle(data, subject.Digest, p)
	if err != nil {
		return nil, err
	}
	v.Signature = ref.Digest
	return v, nil
}

// fetchAll reads a blob or manifest, checking its size and digest while reading (a layer
// whose bytes were changed in place does not match the digest its manifest names).
func fetchAll(ctx context.Context, f content.Fetcher, d ocispec.Descriptor, max int64) ([]byte, error) {
	if d.Size < 0 || d.Size > max {
		return nil, fmt.Errorf("size %d out of bounds", d.Size)
	}
	rc, err := f.Fetch(ctx, d)
	if err != nil {
		if errors.Is(err, errdef.ErrNotFound) {
			return nil, fmt.Errorf("%s not found", d.Digest)
		}
		return nil, err
	}
	defer rc.Close()
	b, err := content.ReadAll(io.LimitReader(rc, max+1), d)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (tampered or truncated)", d.Digest, err)
	}
	return b, nil
}

// VerifyBundle verifies a Sigstore bundle's JSON as a cosign signature of the manifest
// digest d under p. Keys need no timestamp (cosign's --insecure-ignore-tlog verification);
// a certificate is checked at the time of the bundle's verified timestamps when it has any
// (transparency log entries, RFC 3161 timestamps from authorities in the trusted root), else
// at the current time: no server is asked.
func VerifyBundle(data []byte, d digest.Digest, p Policy) (*Verified, error) {
	if len(data) > MaxBundleBytes {
		return nil, fmt.Errorf("bundle of %d bytes, more than %d", len(data), MaxBundleBytes)
	}
	if d.Validate() != nil || d.Algorithm() != digest.SHA256 {
		return nil, fmt.Errorf("verification needs a sha256 manifest digest, not %q", d)
	}
	var b bundle.Bundle
	if err := b.UnmarshalJSON(data); err != nil {
		return nil, fmt.Errorf("not a Sigstore bundle: %w", err)
	}
	if b.GetDsseEnvelope() == nil {
		return nil, errors.New("bundle holds no DSSE envelope (cosign v3 signs images with one)")
	}
	artifact := verify.WithArtifactDigest("sha256", mustHex(d))
	var reasons []string
	vc, err := b.VerificationContent()
	if err != nil {
		return nil, fmt.Errorf("bundle's verification material: %w", err)
	}
	if vc.PublicKey() != nil {
		if len(p.Keys) == 0 {
			return nil, errors.New("signed with a key, but no key is trusted")
		}
		for _, k := range p.Keys {
			res, err := verifyWithKey(&b, k, artifact)
			if err != nil {
				reasons = append(reasons, fmt.Sprintf("key %s: %v", shortID(k.ID), err))
				continue
			}
			if err := checkStatement(res); err != nil {
				return nil, err
			}
			return &Verified{Digest: d, Signer: k.ID}, nil
		}
		return nil, errors.New(strings.Join(reasons, "; "))
	}
	// A certificate.
	if p.TrustedRoot == nil || len(p.Identities) == 0 {
		return nil, errors.New("signed with a certificate (keyless), but no trusted root and identity are given")
	}
	res, err := verifyKeyless(&b, p, artifact)
	if err != nil {
		return nil, err
	}
	if err := checkStatement(res); err != nil {
		return nil, err
	}
	signer := ""
	if res.Signature != nil && res.Signature.Certificate != nil {
		signer = res.Signature.Certificate.SubjectAlternativeName + " (" + res.Signature.Certificate.Issuer + ")"
	}
	return &Verified{Digest: d, Signer: signer}, nil
}

func verifyWithKey(b *bundle.Bundle, k PublicKey, artifact verify.ArtifactPolicyOption) (*verify.VerificationResult, error) {
	v, err := signature.LoadDefaultVerifier(k.Key)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedKey, err)
	}
	expiring := root.NewExpiringKey(v, time.Time{}, time.Time{})
	tm := root.NewTrustedPublicKeyMaterial(func(string) (root.TimeConstrainedVerifier, error) { return expiring, nil })
	ver, err := verify.NewVerifier(tm, verify.WithNoObserverTimestamps())
	if err != nil {
		return nil, err
	}
	return ver.Verify(b, verify.NewPolicy(artifact, verify.WithKey()))
}

func verifyKeyless(b *bundle.Bundle, p Policy, artifact verify.ArtifactPolicyOption) (*verify.VerificationResult, error) {
	var opts []verify.VerifierOption
	entries, _ := b.TlogEntries()
	stamps, _ := b.Timestamps()
	switch {
	case len(entries) > 0:
		opts = append(opts, verify.WithTransparencyLog(1), verify.WithIntegratedTimestamps(1))
	case len(stamps) > 0:
		opts = append(opts, verify.WithSignedTimestamps(1))
	default:
		opts = append(opts, verify.WithCurrentTime())
	}
	if len(p.TrustedRoot.CTLogs()) > 0 {
		opts = append(opts, verify.WithSignedCertificateTimestamps(1))
	}
	ver, err := verify.NewVerifier(p.TrustedRoot, opts...)
	if err != nil {
		return nil, err
	}
	var reasons []string
	for _, id := range p.Identities {
		ci, err := verify.NewShortCertificateIdentity(id.Issuer, id.IssuerRegexp, id.Subject, id.SubjectRegexp)
		if err != nil {
			return nil, fmt.Errorf("identity %s: %w", id, err)
		}
		res, err := ver.Verify(b, verify.NewPolicy(artifact, verify.WithCertificateIdentity(ci)))
		if err == nil {
			return res, nil
		}
		reasons = append(reasons, fmt.Sprintf("identity %s: %v", id, err))
	}
	return nil, errors.New(strings.Join(reasons, "; "))
}

// checkStatement accepts only cosign's signature predicate: an attestation (an SBOM, a
// provenance) signed by the same key says something else than "this image is approved".
func checkStatement(res *verify.VerificationResult) error {
	if res.Statement == nil {
		return errors.New("bundle holds no in-toto statement")
	}
	if pt := res.Statement.GetPredicateType(); pt != SignPredicateType {
		return fmt.Errorf("bundle is an attestation of predicate type %q, not a signature (%s)", pt, SignPredicateType)
	}
	return nil
}

func mustHex(d digest.Digest) []byte {
	b, _ := hex.DecodeString(d.Encoded()) // validated by the caller
	return b
}

func shortID(id string) string {
	if len(id) > len("sha256:")+12 {
		return id[:len("sha256:")+12]
	}
	return id
}

func isAlreadyExists(err error) bool { return errors.Is(err, errdef.ErrAlreadyExists) }
