package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"wasme.io/wasme/internal/signing"
	"wasme.io/wasme/pkg/wasmimage"
)

func newSignCmd(s streams) *cobra.Command {
	var (
		reg     registryFlags
		out     outputFlag
		keyPath string
	)
	cmd := &cobra.Command{
		Use:   "sign IMAGE --key cosign.key",
		Short: "Sign a filter image in its registry, as cosign sign --key does",
		Long: `Sign the manifest IMAGE names (a tag is resolved to its digest first; the digest is what
is signed) with a cosign private key, and attach the signature to the image in its registry.

The signature is what cosign v3 writes by default: a Sigstore bundle (a DSSE envelope of an
in-toto statement naming the manifest digest, predicate type https://sigstore.dev/cosign/sign/v1)
pushed as an OCI referrer of the image, of artifact type
application/vnd.dev.sigstore.bundle.v0.3+json. No transparency log entry is made (that needs
Rekor); verify it with cosign verify --key cosign.pub --insecure-ignore-tlog, or wasme verify.
The key's password comes from $COSIGN_PASSWORD, else the terminal.`,
		Example: `  wasme sign registry.example.com/team/my-filter:v1 --key cosign.key`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if keyPath == "" {
				return fmt.Errorf("sign: --key is required (make a pair with wasme keygen)")
			}
			ref, err := parseRef(args[0])
			if err != nil {
				return err
			}
			keyPEM, err := readKeyFile(keyPath)
			if err != nil {
				return fmt.Errorf("sign: %w", err)
			}
			if err := reg.readPassword(cmd.InOrStdin()); err != nil {
				return err
			}
			pw, err := keyPassword(cmd, s.errOut, false)
			if err != nil {
				return err
			}
			signer, err := signing.LoadPrivateKey(keyPEM, pw)
			if err != nil {
				return fmt.Errorf("sign: %s: %w", keyPath, err)
			}
			opts, err := reg.options()
			if err != nil {
				return err
			}
			repo, desc, err := wasmimage.ResolveDescriptor(cmd.Context(), ref.String(), opts...)
			if err != nil {
				return err
			}
			res, err := signing.Sign(cmd.Context(), repo, desc, signer)
			if err != nil {
				return fmt.Errorf("sign %s: %w", ref.Familiar(), err)
			}
			pinned := ref.Name() + "@" + res.Subject.String()
			return out.print(s.out, signedInfo{Ref: pinned, Digest: res.Subject.String(), Signature: res.Signature.String(), KeyID: res.KeyID}, func() error {
				_, err := fmt.Fprintf(s.out, "Signed %s\nSignature: %s\nKey: %s\n", pinned, res.Signature, res.KeyID)
				return err
			})
		},
	}
	reg.bind(cmd)
	out.bind(cmd)
	cmd.Flags().StringVar(&keyPath, "key", "", "cosign private key file (wasme keygen or cosign generate-key-pair)")
	return cmd
}

// signedInfo is the data output of sign and verify.
type signedInfo struct {
	Ref       string `json:"ref"`
	Digest    string `json:"digest"`
	Signature string `json:"signature"`
	KeyID     string `json:"keyId,omitempty"`
	Signer    string `json:"signer,omitempty"`
}
