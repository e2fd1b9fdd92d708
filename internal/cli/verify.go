package cli

import (
	"errors"
	"fmt"

	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/spf13/cobra"

	"wasme.io/wasme/internal/signing"
	"wasme.io/wasme/pkg/wasmimage"
)

func newVerifyCmd(s streams) *cobra.Command {
	var (
		reg                  registryFlags
		out                  outputFlag
		keyPaths             []string
		trustedRoot          string
		identity, identityRE string
		issuer, issuerRE     string
	)
	cmd := &cobra.Command{
		Use:   "verify IMAGE (--key cosign.pub | --trusted-root FILE --certificate-identity ID --certificate-oidc-issuer URL)",
		Short: "Verify a filter image's signature in its registry, as cosign verify does",
		Long: `Verify that the manifest IMAGE names carries a Sigstore bundle signature (what cosign v3 and
wasme sign attach, as an OCI referrer) that verifies with one of the public keys given, or,
keyless, whose certificate chains to a CA of the trusted root file and names the identity and
OIDC issuer given. The signed digest must be the manifest's: a signature copied from another
image does not verify.

Nothing but the registry is asked: a key needs no timestamp (like cosign's
--insecure-ignore-tlog); a keyless bundle is checked against the transparency log entries and
timestamps it carries, with the keys of the trusted root, else at the current time.
Signatures in cosign's older format (a sha256-<digest>.sig tag) are not read.`,
		Example: `  wasme verify registry.example.com/team/my-filter:v1 --key cosign.pub
  wasme verify registry.example.com/team/my-filter:v1 --trusted-root trusted_root.json \
    --certificate-identity builder@example.com --certificate-oidc-issuer https://issuer.example.com`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ref, err := parseRef(args[0])
			if err != nil {
				return err
			}
			var p signing.Policy
			for _, kp := range keyPaths {
				b, err := readKeyFile(kp)
				if err != nil {
					return fmt.Errorf("verify: %w", err)
				}
				keys, err := signing.ParsePublicKeys(b)
				if err != nil {
					return fmt.Errorf("verify: %s: %w", kp, err)
				}
				p.Keys = append(p.Keys, keys...)
			}
			if trustedRoot != "" {
				tr, err := root.NewTrustedRootFromPath(trustedRoot)
				if err != nil {
					return fmt.Errorf("verify: trusted root %s: %w", trustedRoot, err)
				}
				if (identity == "") == (identityRE == "") || (issuer == "") == (issuerRE == "") {
					return errors.New("verify: --trusted-root needs one of --certificate-identity and --certificate-identity-regexp, and one of --certificate-oidc-issuer and --certificate-oidc-issuer-regexp")
				}
				p.TrustedRoot = tr
				p.Identities = []signing.Identity{{Subject: identity, SubjectRegexp: identityRE, Issuer: issuer, IssuerRegexp: issuerRE}}
			} else if identity != "" || identityRE != "" || issuer != "" || issuerRE != "" {
				return errors.New("verify: a certificate identity needs --trusted-root (the CAs it must chain to)")
			}
			if len(p.Keys) == 0 && p.TrustedRoot == nil {
				return errors.New("verify: give --key, or --trusted-root with a certificate identity")
			}
			if err := reg.readPassword(cmd.InOrStdin()); err != nil {
				return err
			}
			opts, err := reg.options()
			if err != nil {
				return err
			}
			repo, desc, err := wasmimage.ResolveDescriptor(cmd.Context(), ref.String(), opts...)
			if err != nil {
				return err
			}
			v, err := signing.Verify(cmd.Context(), repo, desc, p)
			if err != nil {
				return fmt.Errorf("verify %s: %w", ref.Familiar(), err)
			}
			pinned := ref.Name() + "@" + v.Digest.String()
			return out.print(s.out, signedInfo{Ref: pinned, Digest: v.Digest.String(), Signature: v.Signature.String(), Signer: v.Signer}, func() error {
				_, err := fmt.Fprintf(s.out, "Verified %s\nSigner: %s\nSignature: %s\n", pinned, v.Signer, v.Signature)
				return err
			})
		},
	}
	reg.bind(cmd)
	out.bind(cmd)
	fl := cmd.Flags()
	fl.StringArrayVar(&keyPaths, "key", nil, "cosign public key file (PEM; several keys in one file or several --key: any one suffices)")
	fl.StringVar(&trustedRoot, "trusted-root", "", "Sigstore trusted root JSON (trusted_root.json) for keyless signatures")
	fl.StringVar(&identity, "certificate-identity", "", "keyless: the certificate's subject (email or URI) that must have signed")
	fl.StringVar(&identityRE, "certificate-identity-regexp", "", "keyless: a regexp the certificate's subject must match")
	fl.StringVar(&issuer, "certificate-oidc-issuer", "", "keyless: the OIDC issuer the certificate must name")
	fl.StringVar(&issuerRE, "certificate-oidc-issuer-regexp", "", "keyless: a regexp the certificate's OIDC issuer must match")
	return cmd
}
