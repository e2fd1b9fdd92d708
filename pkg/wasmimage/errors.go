package wasmimage

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/errcode"
)

// Errors callers can test with errors.Is.
var (
	// ErrNotFound: the repository, tag or digest does not exist.
	ErrNotFound = errors.New("not found")
	// ErrUnauthorized: the registry refused the credentials, or wanted some.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrTooLarge: a blob or the module is over the size limit.
	ErrTooLarge = errors.New("too large")
	// ErrDigestMismatch: content does not match the digest that names it.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrUnreachable: the registry could not be reached.
	ErrUnreachable = errors.New("registry unreachable")
)

// classify turns transport errors into one-line errors that say what went wrong and wrap the
// sentinels above; the raw oras errors quote whole URLs and are hard to read in a status.
func classify(ref Reference, op string, err error) error {
	if err == nil {
		return nil
	}
	for _, s := range []error{ErrNotAllowed, ErrNotWasm, ErrNotFilter, ErrBadManifest, ErrBadArchive, ErrTooLarge, ErrDigestMismatch, ErrNotFound, ErrUnauthorized, ErrUnreachable} {
		if errors.Is(err, s) {
			return fmt.Errorf("%s %s: %w", op, ref, err)
		}
	}
	var er *errcode.ErrorResponse
	if errors.As(err, &er) {
		switch er.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("%s %s: %w: registry %s refused the credentials (HTTP %d)", op, ref, ErrUnauthorized, ref.Registry, er.StatusCode)
		case http.StatusNotFound:
			what := "manifest " + ref.target()
			for _, e := range er.Errors {
				if e.Code == errcode.ErrorCodeNameUnknown {
					what = "repository " + ref.Repository
				}
			}
			return fmt.Errorf("%s %s: %w: %s does not exist in %s", op, ref, ErrNotFound, what, ref.Registry)
		}
		msg := http.StatusText(er.StatusCode)
		if len(er.Errors) > 0 {
			msg = er.Errors.Error()
		}
		return fmt.Errorf("%s %s: registry %s answered HTTP %d: %s", op, ref, ref.Registry, er.StatusCode, firstLine(msg))
	}
	if errors.Is(err, errdef.ErrNotFound) {
		return fmt.Errorf("%s %s: %w: %s does not exist in %s", op, ref, ErrNotFound, ref.target(), ref.Registry)
	}
	if errors.Is(err, auth.ErrBasicCredentialNotFound) || strings.Contains(err.Error(), "missing username or password") {
		return fmt.Errorf("%s %s: %w: registry %s requires credentials (wasme login, or -u/-p)", op, ref, ErrUnauthorized, ref.Registry)
	}
	if errors.Is(err, content.ErrMismatchedDigest) || errors.Is(err, content.ErrTrailingData) || errors.Is(err, content.ErrInvalidDescriptorSize) {
		return fmt.Errorf("%s %s: %w: the registry sent content that does not match its digest", op, ref, ErrDigestMismatch)
	}
	if errors.Is(err, errdef.ErrSizeExceedsLimit) {
		return fmt.Errorf("%s %s: %w: %w", op, ref, ErrTooLarge, err)
	}
	msg := err.Error()
	if strings.Contains(msg, "x509:") || strings.Contains(msg, "tls:") {
		return fmt.Errorf("%s %s: TLS with %s failed (use a CA file, or --insecure to skip verification): %s", op, ref, ref.Registry, lastColon(firstLine(msg)))
	}
	if strings.Contains(msg, "server gave HTTP response to HTTPS client") {
		return fmt.Errorf("%s %s: %s speaks plain HTTP (use --plain-http)", op, ref, ref.Registry)
	}
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &oe) || errors.As(err, &ne) {
		cause := err
		if oe != nil && oe.Err != nil {
			cause = oe.Err
		}
		return fmt.Errorf("%s %s: %w: %s: %s", op, ref, ErrUnreachable, ref.Registry, lastColon(firstLine(cause.Error())))
	}
	return fmt.Errorf("%s %s: %s", op, ref, firstLine(msg))
}

// lastColon keeps the end of a Go error chain, "connect: connection refused" style.
func lastColon(s string) string {
	parts := strings.Split(s, ": ")
	if len(parts) > 2 {
		return strings.Join(parts[len(parts)-2:], ": ")
	}
	return s
}
