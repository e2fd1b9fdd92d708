package operator

import (
	"context"

	"wasme.io/wasme/pkg/wasmimage"
)

// RegistryImages is the ImageSource of a running operator: pkg/wasmimage against real
// registries, with each FilterDeployment's own pull options.
type RegistryImages struct {
	// Options apply to every pull (CA files, size limits, retries).
	Options []wasmimage.Option
}

func (s RegistryImages) options(o PullOptions) []wasmimage.Option {
	opts := append([]wasmimage.Option{}, s.Options...)
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
	return d.String(), err
}

// Fetch implements ImageSource.
func (s RegistryImages) Fetch(ctx context.Context, ref string, o PullOptions) (*Image, error) {
	img, err := wasmimage.Pull(ctx, ref, s.options(o)...)
	if err != nil {
		return nil, err
	}
	return &Image{
		ManifestDigest: img.ManifestDigest.String(),
		ModuleDigest:   img.ModuleDigest.String(),
		Module:         img.Module,
		RootIDs:        img.Config.RootIDs,
	}, nil
}
