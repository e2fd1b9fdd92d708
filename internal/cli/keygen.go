package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"wasme.io/wasme/internal/signing"
)

// keyPasswordEnv is cosign's variable for the private key's password; wasme reads the same,
// so scripts that sign with either tool need one setting.
const keyPasswordEnv = "COSIGN_PASSWORD"

func newKeygenCmd(s streams) *cobra.Command {
	var prefix string
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Make an ECDSA P-256 key pair for signing filter images, in cosign's format",
		Long: `Make an ECDSA P-256 key pair in cosign's format: PREFIX.key (the private key, encrypted
with a password; PEM "ENCRYPTED SIGSTORE PRIVATE KEY") and PREFIX.pub (PEM "PUBLIC KEY").
cosign reads both, and wasme reads keys made by cosign generate-key-pair.

The password comes from $COSIGN_PASSWORD (it may be set to the empty string), else it is
asked for on the terminal. Existing files are never overwritten.`,
		Example: `  wasme keygen
  COSIGN_PASSWORD=... wasme keygen --output-key-prefix team-signing`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			privPath, pubPath := prefix+".key", prefix+".pub"
			for _, p := range []string{privPath, pubPath} {
				if _, err := os.Stat(p); err == nil {
					return fmt.Errorf("keygen: %s exists; remove it or choose another --output-key-prefix", p)
				}
			}
			pw, err := keyPassword(cmd, s.errOut, true)
			if err != nil {
				return err
			}
			priv, pub, err := signing.GenerateKeyPair(pw)
			if err != nil {
				return err
			}
			if err := writeNew(privPath, priv, 0o600); err != nil {
				return err
			}
			if err := writeNew(pubPath, pub, 0o644); err != nil {
				_ = os.Remove(privPath)
				return err
			}
			keys, err := signing.ParsePublicKeys(pub)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(s.out, "Private key written to %s\nPublic key written to %s\nKey ID: %s\n", privPath, pubPath, keys[0].ID)
			return err
		},
	}
	cmd.Flags().StringVar(&prefix, "output-key-prefix", "cosign", "write PREFIX.key and PREFIX.pub")
	return cmd
}

// keyPassword reads the private key's password from $COSIGN_PASSWORD, else from the terminal
// (twice when confirm). Without either it fails rather than sign with an empty password
// nobody chose.
func keyPassword(cmd *cobra.Command, prompt io.Writer, confirm bool) ([]byte, error) {
	if v, ok := os.LookupEnv(keyPasswordEnv); ok {
		return []byte(v), nil
	}
	f, ok := cmd.InOrStdin().(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil, fmt.Errorf("the key's password: set $%s (it may be empty), or run on a terminal to be asked", keyPasswordEnv)
	}
	fmt.Fprint(prompt, "Password for the private key: ")
	pw, err := term.ReadPassword(int(f.Fd()))
	fmt.Fprintln(prompt)
	if err != nil {
		return nil, fmt.Errorf("reading the password: %w", err)
	}
	if confirm {
		fmt.Fprint(prompt, "Again: ")
		again, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(prompt)
		if err != nil {
			return nil, fmt.Errorf("reading the password: %w", err)
		}
		if string(again) != string(pw) {
			return nil, errors.New("the passwords differ")
		}
	}
	return pw, nil
}

// writeNew writes data to a new file path through a temporary file in the same directory, so
// an interrupted write leaves no partial key behind and an existing file is never replaced.
func writeNew(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	if err := tmp.Chmod(mode); err != nil {
		_ = tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	// A hard link fails when path exists (unlike rename), so a file made meanwhile survives.
	if err := os.Link(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// readKeyFile reads a key file, bounded: keys are small, and a wrong path (a module, a log)
// should fail fast with a clear error.
func readKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	b, err := io.ReadAll(io.LimitReader(f, signing.MaxKeyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(b) > signing.MaxKeyBytes {
		return nil, fmt.Errorf("%s: %w: larger than %d bytes", path, signing.ErrMalformedKey, signing.MaxKeyBytes)
	}
	return b, nil
}
