package wasmimage

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// AnnotationRootIDs carries the root ids in layouts that have no runtime config (CNCF), so
// that they survive a round trip; wasme's own layouts keep them in runtime-config.json.
const AnnotationRootIDs = "module.wasm.runtime/root_ids"

// Packed is an image laid out in memory, ready to be pushed or stored.
type Packed struct {
	Layout Layout
	// Manifest is the manifest JSON; ManifestDesc describes it.
	Manifest     []byte
	ManifestDesc ocispec.Descriptor
	// Blobs are the config and layer blobs by digest.
	Blobs map[digest.Digest][]byte
	// Descs are the descriptors of Blobs, config first, in push order.
	Descs []ocispec.Descriptor
	// ModuleDigest is the sha256 of the raw module.
	ModuleDigest digest.Digest
}

// Pack lays module and cfg out as an image in the given layout (LayoutWasme if ""). The result
// is deterministic: the same module and config always give the same manifest digest.
func Pack(module []byte, cfg RuntimeConfig, layout Layout) (*Packed, error) {
	if err := CheckHeader(module); err != nil {
		return nil, err
	}
	if layout == "" {
		layout = LayoutWasme
	}
	cfg = cfg.withDefaults()
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	p := &Packed{Layout: layout, Blobs: map[digest.Digest][]byte{}, ModuleDigest: digest.FromBytes(module)}
	blob := func(mt string, b []byte, ann map[string]string) ocispec.Descriptor {
		d := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b)), Annotations: ann}
		if _, ok := p.Blobs[d.Digest]; !ok {
			p.Blobs[d.Digest] = b
			p.Descs = append(p.Descs, d)
		}
		return d
	}
	annotations := cfg.annotations()
	manifest := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Annotations: annotations}
	switch layout {
	case LayoutWasme:
		// The config blob is both the manifest config and layer 0, exactly as wasme wrote it,
		// because fetchers that only look at layers need the runtime config there.
		c := blob(MediaTypeWasmeConfig, cfgJSON, map[string]string{ocispec.AnnotationTitle: wasmeConfigTitle})
		m := blob(MediaTypeWasmeContentLayer, module, map[string]string{ocispec.AnnotationTitle: wasmeModuleTitle})
		manifest.Config = c
		manifest.Layers = []ocispec.Descriptor{c, m}
	case LayoutCompat, LayoutCompatDocker:
		gz, tarBytes, err := compatLayer(module, cfgJSON)
		if err != nil {
			return nil, err
		}
		imgCfg, err := json.Marshal(ocispec.Image{
			Platform: ocispec.Platform{Architecture: "wasm", OS: "wasip1"},
			RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(tarBytes)}},
		})
		if err != nil {
			return nil, err
		}
		cfgMT, layerMT := ocispec.MediaTypeImageConfig, MediaTypeOCILayerTarGzip
		if layout == LayoutCompatDocker {
			cfgMT, layerMT = MediaTypeDockerConfig, MediaTypeDockerLayerGzip
			manifest.MediaType = MediaTypeDockerManifest
		} else {
			annotations[AnnotationVariant] = VariantCompat
		}
		manifest.Config = blob(cfgMT, imgCfg, nil)
		manifest.Layers = []ocispec.Descriptor{blob(layerMT, gz, nil)}
	case LayoutCNCF:
		l := ocispec.Descriptor{MediaType: MediaTypeCNCFWasm, Digest: p.ModuleDigest, Size: int64(len(module))}
		c, err := json.Marshal(struct {
			Architecture string          `json:"architecture"`
			OS           string          `json:"os"`
			LayerDigests []digest.Digest `json:"layerDigests"`
		}{"wasm", "wasip1", []digest.Digest{l.Digest}})
		if err != nil {
			return nil, err
		}
		manifest.ArtifactType = MediaTypeCNCFWasm
		manifest.Config = blob(MediaTypeCNCFConfig, c, nil)
		manifest.Layers = []ocispec.Descriptor{blob(MediaTypeCNCFWasm, module, nil)}
		if len(cfg.RootIDs) > 0 {
			annotations[AnnotationRootIDs] = strings.Join(cfg.RootIDs, ",")
		}
	default:
		return nil, fmt.Errorf("cannot write layout %q (writable: wasme, compat, compat-docker, cncf)", layout)
	}
	var err2 error
	p.Manifest, err2 = marshalManifest(manifest)
	if err2 != nil {
		return nil, err2
	}
	p.ManifestDesc = ocispec.Descriptor{MediaType: manifest.MediaType, Digest: digest.FromBytes(p.Manifest), Size: int64(len(p.Manifest))}
	return p, nil
}

// marshalManifest writes a Docker schema 2 manifest without the OCI-only fields, which Docker
// tooling rejects; OCI manifests are written as they are.
func marshalManifest(m ocispec.Manifest) ([]byte, error) {
	if m.MediaType != MediaTypeDockerManifest {
		return json.Marshal(m)
	}
	return json.Marshal(struct {
		SchemaVersion int                  `json:"schemaVersion"`
		MediaType     string               `json:"mediaType"`
		Config        ocispec.Descriptor   `json:"config"`
		Layers        []ocispec.Descriptor `json:"layers"`
	}{2, m.MediaType, m.Config, m.Layers})
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
