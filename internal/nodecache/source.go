package nodecache

import (
	"context"
	"io"
)

// Source delivers module bytes by digest. The daemon verifies whatever it returns. In the
// cluster it is the operator's module server, through a cacheprotocol.Client.
type Source interface {
	// Fetch returns a reader of the module whose sha256 is hexDigest. The caller closes it.
	Fetch(ctx context.Context, hexDigest string) (io.ReadCloser, error)
}
