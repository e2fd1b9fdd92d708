package operator

import (
	"context"
	"errors"
	"fmt"

	"github.com/go-logr/logr"

	"wasme.io/wasme/pkg/wasmimage"
)

// RegistryImages is the ImageSource of a running operator: pkg/wasmimage against real
// registries, with each FilterDeployment's own pull options.
type RegistryImages struct {
	// Options apply to every pull (CA files, size limits, retries).
	Options []wasmimage.Option
	// Egress is the registry egress policy; nil is wasmimage.DefaultEgressPolicy (any host
	// with public addresses only), never "no policy".
	Egress *wasmimage.EgressPolicy
	// Log receives the detail of failed pulls that statuses do not show.
	Log logr.Logger
}

func (s RegistryImages) options(o PullOptions) []wasmimage.Option {
	opts := append([]wasmimage.Option{}, s.Options...)
	egress := s.Egress
	if egress == nil {
		egress = wasmimage.DefaultEgressPolicy()
	}
	opts = append(opts, wasmimage.WithEgressPolicy(egress))
	opts = append(opts, wasmimage.WithPlainHTTP(o.PlainHTTP), wasmimage.WithInsecureSkipVerify(o.InsecureSkipVerify))
	switch {
	case len(o.DockerConfigJSON) > 0:
		opts = append(opts, wasmimage.WithDockerConfigJSON(o.DockerConfigJSON))
	case o.Username != "":
		opts = append(opts, wasmimage.WithCredentials(o.Username, o.Password))
	}
	return opts
}

// Resolve implements ImageSource.
func (s RegistryImages) Resolve(ctx context.Context, ref string, o PullOptions) (string, error) {
	d, err := wasmimage.Resolve(ctx, ref, s.options(o)...)
	if err != nil {
		return "", s.public(ref, err)
	}
	return d.String(), nil
}

// Fetch implements ImageSource.
func (s RegistryImages) Fetch(ctx context.Context, ref string, o PullOptions) (*Image, error) {
	img, err := wasmimage.Pull(ctx, ref, s.options(o)...)
	if err != nil {
		return nil, s.public(ref, err)
	}
	return &Image{
		ManifestDigest: img.ManifestDigest.String(),
		ModuleDigest:   img.ModuleDigest.String(),
		Module:         img.Module,
		RootIDs:        img.Config.RootIDs,
	}, nil
}

// public turns a pull error into what a FilterDeployment's status may say. Whoever creates a
// FilterDeployment chooses the host, so the status must not be a port scanner: a refused
// connection, a timeout, a TLS failure and an HTTP 500 all read "registry unreachable", and
// a policy refusal names the host, never what it resolved to. Answers in the registry
// protocol (unauthorized, not found, not a Wasm filter image, too large) are kept: they are
// what a tenant needs to fix the reference. The detail goes to the operator's log.
func (s RegistryImages) public(ref string, err error) error {
	if err == nil || errors.Is(err, context.Canceled) {
		return err
	}
	var na *wasmimage.NotAllowedError
	detail := ""
	if errors.As(err, &na) {
		detail = na.Detail
	}
	s.Log.Info("registry request failed", "image", ref, "error", err.Error(), "policy", detail)
	if na != nil {
		return na
	}
	for _, keep := range []error{wasmimage.ErrUnauthorized, wasmimage.ErrNotFound, wasmimage.ErrNotWasm, wasmimage.ErrNotFilter,
		wasmimage.ErrBadManifest, wasmimage.ErrBadArchive, wasmimage.ErrTooLarge, wasmimage.ErrDigestMismatch} {
		if errors.Is(err, keep) {
			return err
		}
	}
	r, perr := wasmimage.ParseReference(ref)
	if perr != nil {
		return err
	}
	return fmt.Errorf("%w: %s (the operator's log has the cause)", wasmimage.ErrUnreachable, r.Registry)
}
