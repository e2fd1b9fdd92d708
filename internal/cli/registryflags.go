package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/resource"

	"wasme.io/wasme/pkg/wasmimage"
)

// registryFlags are the auth and transport flags of every command that talks to a registry.
type registryFlags struct {
	username, password string
	passwordStdin      bool
	credentialsFile    string
	plainHTTP          bool
	insecure           bool
	caFile             string
	maxSize            string
}

func (f *registryFlags) bind(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVarP(&f.username, "username", "u", "", "registry user name (else: the credentials file, then docker's config.json)")
	fl.StringVarP(&f.password, "password", "p", "", "registry password or token")
	fl.BoolVar(&f.passwordStdin, "password-stdin", false, "read the password from standard input")
	fl.StringVar(&f.credentialsFile, "credentials-file", "", "wasme credentials file (default ~/.wasme/credentials.json)")
	fl.BoolVar(&f.plainHTTP, "plain-http", false, "talk plain HTTP to the registry")
	fl.BoolVar(&f.insecure, "insecure", false, "skip TLS certificate verification")
	fl.StringVar(&f.caFile, "ca-file", "", "PEM file with CA certificates to trust for the registry")
	fl.StringVar(&f.maxSize, "max-size", resource.NewQuantity(wasmimage.DefaultMaxModuleSize, resource.BinarySI).String(), "largest module accepted, a quantity such as 64Mi")
}

func defaultCredentialsFile() string {
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return filepath.Join(home, ".wasme", "credentials.json")
}

func (f *registryFlags) credentialsPath() string {
	if f.credentialsFile != "" {
		return f.credentialsFile
	}
	return defaultCredentialsFile()
}

// readPassword resolves --password-stdin once, so options() can be called more than once.
func (f *registryFlags) readPassword(in io.Reader) error {
	if !f.passwordStdin {
		return nil
	}
	if f.password != "" {
		return errors.New("--password and --password-stdin are exclusive")
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && err != io.EOF {
		return fmt.Errorf("reading the password from stdin: %w", err)
	}
	f.password = strings.TrimRight(line, "\r\n")
	f.passwordStdin = false
	return nil
}

func (f *registryFlags) options() ([]wasmimage.Option, error) {
	if (f.username == "") != (f.password == "") && f.username != "" {
		return nil, errors.New("--username needs --password (or --password-stdin)")
	}
	maxSize, err := parseSize("--max-size", f.maxSize)
	if err != nil {
		return nil, err
	}
	if maxSize == 0 {
		return nil, errors.New("--max-size must be more than 0")
	}
	opts := []wasmimage.Option{
		wasmimage.WithPlainHTTP(f.plainHTTP),
		wasmimage.WithInsecureSkipVerify(f.insecure),
		wasmimage.WithCAFile(f.caFile),
		wasmimage.WithMaxModuleSize(maxSize),
		wasmimage.WithUserAgent("wasme/" + Version),
	}
	if f.username != "" {
		opts = append(opts, wasmimage.WithCredentials(f.username, f.password))
	} else {
		opts = append(opts, wasmimage.WithDefaultCredentials(f.credentialsPath()))
	}
	return opts, nil
}

// storeFlag is the --store flag of the commands that use the local store.
type storeFlag struct{ dir string }

func (f *storeFlag) bind(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.dir, "store", "", "local image store (default $WASME_STORE or ~/.wasme/store)")
}

func (f *storeFlag) open() (*wasmimage.Store, error) {
	dir := f.dir
	if dir == "" {
		dir = os.Getenv("WASME_STORE")
	}
	return wasmimage.OpenStore(dir)
}

// imageInfo is the data output of build, pull, push and tag.
type imageInfo struct {
	Ref            string   `json:"ref"`
	ModuleDigest   string   `json:"moduleDigest"`
	ManifestDigest string   `json:"manifestDigest,omitempty"`
	Size           int64    `json:"size"`
	Layout         string   `json:"layout,omitempty"`
	Type           string   `json:"type,omitempty"`
	AbiVersions    []string `json:"abiVersions,omitempty"`
	RootIDs        []string `json:"rootIds,omitempty"`
}

func infoOf(e *wasmimage.StoreEntry) imageInfo {
	return imageInfo{Ref: e.Ref, ModuleDigest: e.ModuleDigest.String(), ManifestDigest: e.ManifestDigest.String(), Size: e.Size, Type: e.Config.Type, AbiVersions: e.Config.AbiVersions, RootIDs: e.Config.RootIDs}
}

func parseRef(s string) (wasmimage.Reference, error) { return wasmimage.ParseReference(s) }
