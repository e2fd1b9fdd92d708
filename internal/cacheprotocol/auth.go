package cacheprotocol

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
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
}

// TokenReviewAuthenticator authenticates tokens with the API server's TokenReview API. It
// remembers accepted tokens for a short while, because every node of the cluster asks for
// the same module at the same moment when a FilterDeployment changes.
type TokenReviewAuthenticator struct {
	client    client.Client
	audiences []string
	ttl       time.Duration

	mu       sync.Mutex
	accepted map[[sha256.Size]byte]acceptedToken
}

type acceptedToken struct {
	user    string
	expires time.Time
}

// maxRememberedTokens bounds the memory an attacker could make the cache use; real clusters
// have one token per node.
const maxRememberedTokens = 8192

// NewTokenReviewAuthenticator authenticates with TokenReviews created through c (which needs
// create on tokenreviews.authentication.k8s.io). audiences, if any, must be in the token;
// none means the API server's own. Accepted tokens are remembered for ttl (0: not at all),
// so a revoked token may still work for that long.
func NewTokenReviewAuthenticator(c client.Client, ttl time.Duration, audiences ...string) *TokenReviewAuthenticator {
	return &TokenReviewAuthenticator{client: c, audiences: audiences, ttl: ttl, accepted: map[[sha256.Size]byte]acceptedToken{}}
}

// Authenticate implements Authenticator.
func (a *TokenReviewAuthenticator) Authenticate(ctx context.Context, token string) (string, error) {
	// Keyed by hash so that the tokens themselves are not kept in memory.
	key := sha256.Sum256([]byte(token))
	now := time.Now()
	a.mu.Lock()
	if t, ok := a.accepted[key]; ok && now.Before(t.expires) {
		a.mu.Unlock()
		return t.user, nil
	}
	a.mu.Unlock()

	review := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: a.audiences}}
	if err := a.client.Create(ctx, review); err != nil {
		return "", fmt.Errorf("creating a TokenReview: %w", err)
	}
	if !review.Status.Authenticated {
		if review.Status.Error != "" {
			return "", fmt.Errorf("%w: %s", ErrUnauthenticated, review.Status.Error)
		}
		return "", ErrUnauthenticated
	}
	user := review.Status.User.Username
	if a.ttl > 0 {
		a.mu.Lock()
		if len(a.accepted) >= maxRememberedTokens {
			clear(a.accepted)
		}
		a.accepted[key] = acceptedToken{user: user, expires: now.Add(a.ttl)}
		a.mu.Unlock()
	}
	return user, nil
}
