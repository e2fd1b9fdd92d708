package wasmimage

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Media types and annotations of the layouts this package reads and writes.
const (
	MediaTypeWasmeConfig        = "application/vnd.module.wasm.config.v1+json"
	MediaTypeWasmeContentLayer  = "application/vnd.module.wasm.content.layer.v1+wasm"
	MediaTypeWasmToOCILayer     = "application/vnd.wasm.content.layer.v1+wasm"
	MediaTypeCNCFWasm           = "application/wasm"
	MediaTypeCNCFConfig         = "application/vnd.wasm.config.v0+json"
	MediaTypeOCILayerTarGzip    = ocispec.MediaTypeImageLayerGzip
	MediaTypeDockerLayerGzip    = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	MediaTypeDockerConfig       = "application/vnd.docker.container.image.v1+json"

	AnnotationABIVersion  = "module.wasm.runtime/abi_version"
	AnnotationRuntimeType = "module.wasm.runtime/type"
	AnnotationVariant     = "module.wasm.image/variant"
	VariantCompat         = "compat"
	compatModuleFile      = "plugin.wasm"
	compatRuntimeFile     = "runtime-config.json"
	wasmeModuleTitle      = "filter.wasm"
	wasmeConfigTitle      = "runtime-config.json"
)

// Layout names a way of laying a Wasm module out in an image.
type Layout string

// The layouts; the zero value means LayoutWasme when writing.
const (
	// LayoutWasme is wasme's OCI variant: config and layer 0 are the runtime config, layer 1 the
	// raw module. Exactly two layers, as the Istio, Envoy Gateway and Higress fetchers require.
	LayoutWasme Layout = "wasme"
	// LayoutCompat is the compat variant with OCI media types: the last layer is a tar+gzip
	// holding plugin.wasm (and runtime-config.json). For registries refusing custom media types.
	LayoutCompat Layout = "compat"
	// LayoutCompatDocker is the compat variant with Docker v2 schema 2 media types.
	LayoutCompatDocker Layout = "compat-docker"
	// LayoutWasmToOCI is wasm-to-oci's layout (read only).
	LayoutWasmToOCI Layout = "wasm-to-oci"
	// LayoutCNCF is the CNCF TAG Runtime Wasm artifact: config application/vnd.wasm.config.v0+json,
	// one application/wasm layer.
	LayoutCNCF Layout = "cncf"
	// LayoutRawLayer is a manifest with a single layer holding raw wasm bytes under any media
	// type (read only).
	LayoutRawLayer Layout = "raw"
)

// WritableLayouts are the layouts Push can write.
var WritableLayouts = []Layout{LayoutWasme, LayoutCompat, LayoutCompatDocker, LayoutCNCF}

// ParseLayout maps a user's layout name to a Layout; "" is LayoutWasme.
func ParseLayout(s string) (Layout, error) {
	if s == "" || s == "oci" {
		return LayoutWasme, nil
	}
	for _, l := range WritableLayouts {
		if string(l) == s {
			return l, nil
		}
	}
	names := make([]string, len(WritableLayouts))
	for i, l := range WritableLayouts {
		names[i] = string(l)
	}
	return "", fmt.Errorf("unknown layout %q (one of %s)", s, strings.Join(names, ", "))
}

// ErrBadManifest is wrapped by errors about manifests and indexes this package cannot use.
var ErrBadManifest = errors.New("bad manifest")

// manifestPlan says which blobs of a manifest hold the module and its runtime config.
type manifestPlan struct {
	Layout Layout
	// Module is the layer holding the module (raw, or a tar+gzip for the compat layouts).
	Module ocispec.Descriptor
	// Config is the wasme runtime-config blob, if the layout has one.
	Config *ocispec.Descriptor
	// Annotations are the manifest's annotations.
	Annotations map[string]string
}

// manifestJSON covers both OCI and Docker manifests and indexes, so one parse decides.
type manifestJSON struct {
	SchemaVersion int                  `json:"schemaVersion"`
	MediaType     string               `json:"mediaType,omitempty"`
	ArtifactType  string               `json:"artifactType,omitempty"`
	Config        *ocispec.Descriptor  `json:"config,omitempty"`
	Layers        []ocispec.Descriptor `json:"layers,omitempty"`
	Manifests     []ocispec.Descriptor `json:"manifests,omitempty"`
	Annotations   map[string]string    `json:"annotations,omitempty"`
}

func isIndexMediaType(mt string) bool {
	return mt == ocispec.MediaTypeImageIndex || mt == MediaTypeDockerManifestList
}

func parseManifestJSON(b []byte) (manifestJSON, error) {
	var m manifestJSON
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%w: not JSON: %w", ErrBadManifest, err)
	}
	if m.SchemaVersion != 2 {
		return m, fmt.Errorf("%w: schemaVersion %d, want 2", ErrBadManifest, m.SchemaVersion)
	}
	for _, d := range append(append([]ocispec.Descriptor{}, m.Layers...), m.Manifests...) {
		if err := checkDescriptor(d); err != nil {
			return m, err
		}
	}
	if m.Config != nil {
		if err := checkDescriptor(*m.Config); err != nil {
			return m, err
		}
	}
	return m, nil
}

func checkDescriptor(d ocispec.Descriptor) error {
	if err := d.Digest.Validate(); err != nil {
		return fmt.Errorf("%w: descriptor digest %q: %w", ErrBadManifest, d.Digest, err)
	}
	if d.Digest.Algorithm() != digest.SHA256 {
		return fmt.Errorf("%w: descriptor digest %q: only sha256 is supported", ErrBadManifest, d.Digest)
	}
	if d.Size < 0 {
		return fmt.Errorf("%w: descriptor %s has negative size", ErrBadManifest, d.Digest)
	}
	return nil
}

// DetectLayout tells which layout a manifest (not an index) uses and returns its name. It is
// the pure part of Pull, exposed so that other tools classify images the same way.
func DetectLayout(manifest []byte) (Layout, error) {
	m, err := parseManifestJSON(manifest)
	if err != nil {
		return "", err
	}
	p, err := planManifest(m)
	return p.Layout, err
}

func planManifest(m manifestJSON) (manifestPlan, error) {
	if isIndexMediaType(m.MediaType) || (len(m.Manifests) > 0 && len(m.Layers) == 0) {
		return manifestPlan{}, fmt.Errorf("%w: an index, not a manifest", ErrBadManifest)
	}
	if len(m.Layers) == 0 {
		return manifestPlan{}, fmt.Errorf("%w: no layers", ErrBadManifest)
	}
	p := manifestPlan{Annotations: m.Annotations}
	configMT := ""
	if m.Config != nil {
		configMT = m.Config.MediaType
	}
	find := func(mt string) (ocispec.Descriptor, int) {
		var found ocispec.Descriptor
		n := 0
		for _, l := range m.Layers {
			if l.MediaType == mt {
				found = l
				n++
			}
		}
		return found, n
	}
	if d, n := find(MediaTypeWasmeContentLayer); n > 0 {
		if n > 1 {
			return p, fmt.Errorf("%w: %d layers of type %s, want one", ErrBadManifest, n, MediaTypeWasmeContentLayer)
		}
		p.Layout, p.Module = LayoutWasme, d
		if configMT == MediaTypeWasmeConfig {
			c := *m.Config
			p.Config = &c
		} else if c, n := find(MediaTypeWasmeConfig); n == 1 {
			p.Config = &c
		}
		return p, nil
	}
	for _, mt := range []string{MediaTypeWasmToOCILayer, MediaTypeCNCFWasm} {
		if d, n := find(mt); n > 0 {
			if n > 1 {
				return p, fmt.Errorf("%w: %d layers of type %s, want one", ErrBadManifest, n, mt)
			}
			p.Module = d
			p.Layout = LayoutWasmToOCI
			if mt == MediaTypeCNCFWasm {
				p.Layout = LayoutCNCF
			}
			return p, nil
		}
	}
	last := m.Layers[len(m.Layers)-1]
	switch last.MediaType {
	case MediaTypeOCILayerTarGzip:
		p.Layout, p.Module = LayoutCompat, last
		return p, nil
	case MediaTypeDockerLayerGzip:
		p.Layout, p.Module = LayoutCompatDocker, last
		return p, nil
	}
	if len(m.Layers) == 1 {
		p.Layout, p.Module = LayoutRawLayer, last
		return p, nil
	}
	types := make([]string, len(m.Layers))
	for i, l := range m.Layers {
		types[i] = l.MediaType
	}
	return p, fmt.Errorf("%w: no Wasm layer among %d layers (%s)", ErrBadManifest, len(m.Layers), strings.Join(types, ", "))
}

// chooseFromIndex picks the wasm entry of an index: platform wasip1/wasm (or any wasm
// architecture or os), else the only entry.
func chooseFromIndex(m manifestJSON) (ocispec.Descriptor, error) {
	var wasm []ocispec.Descriptor
	for _, d := range m.Manifests {
		if d.Platform != nil && (d.Platform.Architecture == "wasm" || strings.HasPrefix(d.Platform.OS, "wasi") || d.Platform.OS == "wasm") {
			wasm = append(wasm, d)
		}
	}
	switch {
	case len(wasm) >= 1:
		for _, d := range wasm {
			if d.Platform.OS == "wasip1" {
				return d, nil
			}
		}
		return wasm[0], nil
	case len(m.Manifests) == 1:
		return m.Manifests[0], nil
	case len(m.Manifests) == 0:
		return ocispec.Descriptor{}, fmt.Errorf("%w: empty index", ErrBadManifest)
	}
	return ocispec.Descriptor{}, fmt.Errorf("%w: index has %d entries and none for platform wasip1/wasm", ErrBadManifest, len(m.Manifests))
}
