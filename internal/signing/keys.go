// Package signing signs and verifies Wasm filter images the way cosign v3 does by default: a
// Sigstore bundle (v0.3, a DSSE envelope of an in-toto statement whose subject is the image's
// manifest digest, predicate type https://sigstore.dev/cosign/sign/v1) pushed as an OCI 1.1
// referrer of the image (artifact type application/vnd.dev.sigstore.bundle.v0.3+json), with
// keys in cosign's format (an ECDSA P-256 PKCS#8 key encrypted with scrypt and NaCl secretbox,
// PEM "ENCRYPTED SIGSTORE PRIVATE KEY"; the public key as PEM "PUBLIC KEY").
//
// The Sigstore libraries (sigstore-go, sigstore/sigstore, go-securesystemslib) do the
// cryptography; this package only lays their output out in the registry and back.
package signing

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/secure-systems-lab/go-securesystemslib/encrypted"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/cryptoutils/goodkey"
)

// PEM block types of cosign's private keys: cosign writes the first, reads both.
const (
	SigstorePrivateKeyPEMType = "ENCRYPTED SIGSTORE PRIVATE KEY"
	CosignPrivateKeyPEMType   = "ENCRYPTED COSIGN PRIVATE KEY"
)

// Limits on key material read from files, Secrets and ConfigMaps: a key source is the
// tenant's input, so it is bounded before it is parsed.
const (
	// MaxKeyBytes is the largest key file or Secret/ConfigMap value read.
	MaxKeyBytes = 64 << 10
	// MaxKeys is the most public keys one source may hold.
	MaxKeys = 32
)

// ErrMalformedKey is wrapped by every error about key material that cannot be used.
var ErrMalformedKey = errors.New("malformed key")

// GenerateKeyPair makes an ECDSA P-256 key pair in cosign's format: the private key encrypted
// with password (which may be empty, as cosign allows), the public key as PEM.
func GenerateKeyPair(password []byte) (privatePEM, publicPEM []byte, err error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating the key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, nil, fmt.Errorf("encoding the private key: %w", err)
	}
	enc, err := encrypted.Encrypt(der, password)
	if err != nil {
		return nil, nil, fmt.Errorf("encrypting the private key: %w", err)
	}
	privatePEM = pem.EncodeToMemory(&pem.Block{Type: SigstorePrivateKeyPEMType, Bytes: enc})
	publicPEM, err = cryptoutils.MarshalPublicKeyToPEM(priv.Public())
	if err != nil {
		return nil, nil, fmt.Errorf("encoding the public key: %w", err)
	}
	return privatePEM, publicPEM, nil
}

// LoadPrivateKey decrypts a cosign private key (either PEM type) with password.
func LoadPrivateKey(data, password []byte) (crypto.Signer, error) {
	if len(data) > MaxKeyBytes {
		return nil, fmt.Errorf("%w: private key file larger than %d bytes", ErrMalformedKey, MaxKeyBytes)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%w: no PEM block in the private key", ErrMalformedKey)
	}
	if block.Type != SigstorePrivateKeyPEMType && block.Type != CosignPrivateKeyPEMType {
		return nil, fmt.Errorf("%w: PEM block %q is not a cosign private key (%q)", ErrMalformedKey, block.Type, SigstorePrivateKeyPEMType)
	}
	der, err := encrypted.Decrypt(block.Bytes, password)
	if err != nil {
		return nil, fmt.Errorf("decrypting the private key (wrong password?): %w", err)
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: parsing the private key: %w", ErrMalformedKey, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: a %T cannot sign", ErrMalformedKey, k)
	}
	return s, nil
}

// PublicKey is a verification key and its ID.
type PublicKey struct {
	Key crypto.PublicKey
	// ID names the key in statuses and output: "sha256:" and the hex SHA-256 of its DER
	// (SubjectPublicKeyInfo) encoding, which does not depend on how the PEM was wrapped.
	ID string
}

// KeyID is the ID of a public key (see PublicKey.ID).
func KeyID(k crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// ParsePublicKeys reads one or more PEM "PUBLIC KEY" blocks (a cosign.pub, or several
// concatenated for a rotation). Anything else in data, or no key at all, is an error.
func ParsePublicKeys(data []byte) ([]PublicKey, error) {
	if len(data) > MaxKeyBytes {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrMalformedKey, MaxKeyBytes)
	}
	var keys []PublicKey
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("%w: PEM block %q is not a PUBLIC KEY", ErrMalformedKey, block.Type)
		}
		if len(keys) == MaxKeys {
			return nil, fmt.Errorf("%w: more than %d public keys", ErrMalformedKey, MaxKeys)
		}
		k, err := cryptoutils.UnmarshalPEMToPublicKey(pem.EncodeToMemory(block))
		if err != nil {
			return nil, fmt.Errorf("%w: public key %d: %w", ErrMalformedKey, len(keys)+1, err)
		}
		if err := goodkey.ValidatePubKey(k); err != nil {
			return nil, fmt.Errorf("%w: public key %d: %w", ErrMalformedKey, len(keys)+1, err)
		}
		id, err := KeyID(k)
		if err != nil {
			return nil, fmt.Errorf("%w: public key %d: %w", ErrMalformedKey, len(keys)+1, err)
		}
		keys = append(keys, PublicKey{Key: k, ID: id})
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, fmt.Errorf("%w: text that is not a PEM block after %d public keys", ErrMalformedKey, len(keys))
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: no PEM PUBLIC KEY block", ErrMalformedKey)
	}
	return keys, nil
}
