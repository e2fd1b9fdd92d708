package wasmimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"
)

// ErrBadArchive is wrapped by errors about compat layers that cannot be used.
var ErrBadArchive = errors.New("bad compat layer")

// tarOverhead is what the tar format may add around the files we want (headers, padding,
// other small entries) before the decompressed stream counts as a bomb.
const tarOverhead = 1 << 20

// ExtractCompatLayer reads a compat-variant layer (tar+gzip, or plain tar) and returns
// plugin.wasm and, if present, runtime-config.json. It refuses paths that escape the archive
// root ("../", absolute), links posing as the module, and any stream that decompresses to more
// than maxSize plus a little tar overhead, while reading.
func ExtractCompatLayer(layer []byte, maxSize int64) (module, runtimeConfig []byte, err error) {
	if maxSize <= 0 {
		maxSize = DefaultMaxModuleSize
	}
	var r io.Reader = bytes.NewReader(layer)
	if len(layer) >= 2 && layer[0] == 0x1f && layer[1] == 0x8b {
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: gzip: %w", ErrBadArchive, err)
		}
		defer zr.Close() //nolint:errcheck // Close reports the read errors that the reads below already returned
		r = zr
	}
	limit := 2*maxSize + tarOverhead
	lr := &io.LimitedReader{R: r, N: limit + 1}
	tr := tar.NewReader(lr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if lr.N <= 0 {
				return nil, nil, fmt.Errorf("%w: layer decompresses to more than %d bytes", ErrTooLarge, limit)
			}
			return nil, nil, fmt.Errorf("%w: tar: %w", ErrBadArchive, err)
		}
		name, err := cleanTarPath(h.Name)
		if err != nil {
			return nil, nil, err
		}
		if name != compatModuleFile && name != compatRuntimeFile {
			continue
		}
		if h.Typeflag != tar.TypeReg {
			return nil, nil, fmt.Errorf("%w: %s is not a regular file (tar type %q)", ErrBadArchive, name, h.Typeflag)
		}
		max := maxSize
		if name == compatRuntimeFile {
			max = maxConfigSize
		}
		if h.Size > max {
			return nil, nil, fmt.Errorf("%w: %s is %d bytes, limit %d", ErrTooLarge, name, h.Size, max)
		}
		b, err := io.ReadAll(io.LimitReader(tr, max+1))
		if err != nil {
			if lr.N <= 0 {
				return nil, nil, fmt.Errorf("%w: layer decompresses to more than %d bytes", ErrTooLarge, limit)
			}
			return nil, nil, fmt.Errorf("%w: reading %s: %w", ErrBadArchive, name, err)
		}
		if name == compatModuleFile {
			module = b
		} else {
			runtimeConfig = b
		}
	}
	if module == nil {
		return nil, nil, fmt.Errorf("%w: no %s in the layer", ErrBadArchive, compatModuleFile)
	}
	return module, runtimeConfig, nil
}

// cleanTarPath refuses names that would land outside the extraction root, even though we
// never write the archive to disk: an image carrying them is hostile or broken either way.
func cleanTarPath(name string) (string, error) {
	n := strings.ReplaceAll(name, "\\", "/")
	if strings.HasPrefix(n, "/") {
		return "", fmt.Errorf("%w: absolute path %q in tar", ErrBadArchive, name)
	}
	for _, part := range strings.Split(n, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: path %q escapes the archive root", ErrBadArchive, name)
		}
	}
	return path.Clean(n), nil
}

// compatLayer builds the tar+gzip layer of the compat variant. Headers and gzip metadata are
// fixed so that the same module always gives the same layer digest.
func compatLayer(module, runtimeConfig []byte) (gz []byte, diffID []byte, err error) {
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	epoch := time.Unix(0, 0).UTC()
	add := func(name string, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	if err := add(compatModuleFile, module); err != nil {
		return nil, nil, err
	}
	if runtimeConfig != nil {
		if err := add(compatRuntimeFile, runtimeConfig); err != nil {
			return nil, nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, nil, err
	}
	var gzBuf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gzBuf, gzip.DefaultCompression)
	if err != nil {
		return nil, nil, err
	}
	if _, err := zw.Write(tarBuf.Bytes()); err != nil {
		return nil, nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, nil, err
	}
	return gzBuf.Bytes(), tarBuf.Bytes(), nil
}
