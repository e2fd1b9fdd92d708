package cacheprotocol

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// ErrUnauthenticated is returned by an Authenticator for a token it does not accept.
var ErrUnauthenticated = errors.New("token not authenticated")

// Authenticator turns a bearer token into the user it authenticates. It returns an error
// wrapping ErrUnauthenticated for a token that is invalid, expired or revoked, and any other
// error when it cannot decide.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (user string, err error)
	// Remembered answers as Authenticate would from recent decisions alone, without asking
	// anyone; ok is false for a token it has not decided lately. The server asks it first for
	// callers that used up their budget of rejections.
	Remembered(token string) (user string, ok bool, err error)
}

// TokenReviewAuthenticator authenticates tokens with the API server's TokenReview API, for
// one audience. It remembers accepted tokens for a short while, because every node of the
// cluster asks for the same module at the same moment when a FilterDeployment changes, and
// rejected ones as long, so that a caller repeating a bad token costs the API server one
// TokenReview.
type TokenReviewAuthenticator struct {
	client   client.Client
	audience string
	ttl      time.Duration

	mu       sync.Mutex
	accepted map[[sha256.Size]byte]rememberedToken
	rejected map[[sha256.Size]byte]rememberedToken
}

type rememberedToken struct {
	user    string // accepted: the user; rejected: why
	expires time.Time
}

// maxRememberedTokens bounds the memory an attacker could make either cache use; real
// clusters have one token per node.
const maxRememberedTokens = 8192

// NewTokenReviewAuthenticator authenticates with TokenReviews created through c (which needs
// create on tokenreviews.authentication.k8s.io), accepting only tokens issued for audience
// (empty means Audience) and checking that the API server says so in status.audiences.
// Decisions are remembered for ttl (0: not at all), so a revoked token may still work for
// that long.
func NewTokenReviewAuthenticator(c client.Client, ttl time.Duration, audience string) *TokenReviewAuthenticator {
	if audience == "" {
		audience = Audience
	}
	return &TokenReviewAuthenticator{
		client: c, audience: audience, ttl: ttl,
		accepted: map[[sha256.Size]byte]rememberedToken{},
		rejected: map[[sha256.Size]byte]rememberedToken{},
	}
}

// Remembered implements Authenticator.
func (a *TokenReviewAuthenticator) Remembered(token string) (string, bool, error) {
	return a.remembered(sha256.Sum256([]byte(token)), time.Now())
}

func (a *TokenReviewAuthenticator) remembered(key [sha256.Size]byte, now time.Time) (string, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if t, ok := a.accepted[key]; ok && now.Before(t.expires) {
		return t.user, true, nil
	}
	if t, ok := a.rejected[key]; ok && now.Before(t.expires) {
		return "", true, fmt.Errorf("%w: %s", ErrUnauthenticated, t.user)
	}
	return "", false, nil
}

// Authenticate implements Authenticator.
func (a *TokenReviewAuthenticator) Authenticate(ctx context.Context, token string) (string, error) {
	// Keyed by hash so that the tokens themselves are not kept in memory.
	key := sha256.Sum256([]byte(token))
	now := time.Now()
	if user, ok, err := a.remembered(key, now); ok {
		return user, err
	}

	review := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{a.audience}}}
	if err := a.client.Create(ctx, review); err != nil {
		// Not remembered: the API server may answer next time.
		return "", fmt.Errorf("creating a TokenReview: %w", err)
	}
	var reason string
	switch {
	case !review.Status.Authenticated && review.Status.Error != "":
		reason = review.Status.Error
	case !review.Status.Authenticated:
		reason = "not authenticated"
	case !slices.Contains(review.Status.Audiences, a.audience):
		// An API server that ignores spec.audiences would authenticate a token meant for
		// itself; one stolen from a pod's default mount must not fetch modules.
		reason = fmt.Sprintf("token is not for audience %q", a.audience)
	}
	if reason != "" {
		a.remember(a.rejected, key, reason, now)
		return "", fmt.Errorf("%w: %s", ErrUnauthenticated, reason)
	}
	user := review.Status.User.Username
	a.remember(a.accepted, key, user, now)
	return user, nil
}

func (a *TokenReviewAuthenticator) remember(m map[[sha256.Size]byte]rememberedToken, key [sha256.Size]byte, v string, now time.Time) {
	if a.ttl <= 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(m) >= maxRememberedTokens {
		clear(m)
	}
	m[key] = rememberedToken{user: v, expires: now.Add(a.ttl)}
}
