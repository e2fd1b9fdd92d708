package wasmimage_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
)

// compatGz builds a compat layer by hand, as docker build or buildah would: plugin.wasm (if
// module is non-nil), runtime-config.json (if cfg is non-nil) and one extra file.
func compatGz(module, cfg []byte, extra string) ([]byte, error) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	add := func(name string, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	if extra != "" {
		if err := add(extra, []byte("extra")); err != nil {
			return nil, err
		}
	}
	if module != nil {
		if err := add("plugin.wasm", module); err != nil {
			return nil, err
		}
	}
	if cfg != nil {
		if err := add("runtime-config.json", cfg); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
