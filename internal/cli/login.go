package cli

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/spf13/cobra"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"
	"oras.land/oras-go/v2/registry/remote/errcode"

	"wasme.io/wasme/pkg/wasmimage"
)

func newLoginCmd(s streams) *cobra.Command {
	var (
		reg    registryFlags
		server string
	)
	cmd := &cobra.Command{
		Use:   "login SERVER -u USER (-p PASSWORD | --password-stdin)",
		Short: "Check credentials against a registry and save them",
		Long: `Log in to any OCI registry: the credentials are checked against the registry's /v2/ endpoint
(basic or bearer token auth) and, when accepted, saved to ~/.wasme/credentials.json (docker
config.json format; other servers in the file are kept). wasme push and pull use them, then
docker's own config.json.`,
		Example: `  wasme login registry.example.com -u me --password-stdin < token.txt
  wasme login -s registry.example.com -u me -p secret --credentials-file ./creds.json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				if server != "" && server != args[0] {
					return fmt.Errorf("login: server given twice (%s and -s %s)", args[0], server)
				}
				server = args[0]
			}
			if server == "" {
				return errors.New("login: which registry? (wasme login SERVER)")
			}
			if err := reg.readPassword(cmd.InOrStdin()); err != nil {
				return err
			}
			if reg.username == "" || reg.password == "" {
				return errors.New("login: --username and --password (or --password-stdin) are required")
			}
			path := reg.credentialsPath()
			store, err := credentials.NewStore(path, credentials.StoreOptions{AllowPlaintextPut: true})
			if err != nil {
				return fmt.Errorf("login: credentials file %s: %w", path, err)
			}
			r, err := wasmimage.Registry(server,
				wasmimage.WithPlainHTTP(reg.plainHTTP),
				wasmimage.WithInsecureSkipVerify(reg.insecure),
				wasmimage.WithCAFile(reg.caFile),
				wasmimage.WithRetries(2))
			if err != nil {
				return fmt.Errorf("login: %w", err)
			}
			cred := auth.Credential{Username: reg.username, Password: reg.password}
			if err := credentials.Login(cmd.Context(), store, r, cred); err != nil {
				var er *errcode.ErrorResponse
				if errors.As(err, &er) && (er.StatusCode == http.StatusUnauthorized || er.StatusCode == http.StatusForbidden) {
					return fmt.Errorf("login %s: %w: wrong username or password", server, wasmimage.ErrUnauthorized)
				}
				return fmt.Errorf("login %s: %s", server, lastErrPart(err))
			}
			_, err = fmt.Fprintf(s.out, "Login succeeded: credentials for %s saved to %s\n", server, path)
			return err
		},
	}
	reg.bind(cmd)
	cmd.Flags().StringVarP(&server, "server", "s", "", "registry host[:port] (or give it as the argument)")
	return cmd
}

// lastErrPart keeps an error to one line and drops the quoted URL oras puts before the cause.
func lastErrPart(err error) string {
	msg, _, _ := strings.Cut(err.Error(), "\n")
	if i := strings.LastIndex(msg, "\": "); i >= 0 {
		msg = msg[i+3:]
	}
	return msg
}
