package cacheprotocol_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	authenticationv1 "k8s.io/api/authentication/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"wasme.io/wasme/internal/cacheprotocol"
)

// reviewCounter is the real API server's client, counting the TokenReviews created through it.
func reviewCounter(t *testing.T) (client.Client, *atomic.Int32) {
	t.Helper()
	c, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	n := new(atomic.Int32)
	return interceptor.NewClient(c, interceptor.Funcs{
		Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			if _, ok := obj.(*authenticationv1.TokenReview); ok {
				n.Add(1)
			}
			return c.Create(ctx, obj, opts...)
		},
	}), n
}

// TestTokenReviews counts what each kind of caller costs the API server, each against a server
// of its own (so the budgets of rejections start full).
func TestTokenReviews(t *testing.T) {
	ns := env.Namespace(t)
	good := serviceAccountToken(t, ns, "wasme-cache")
	apiAudience := apiServerToken(t, ns, "wasme-cache")
	module := []byte("\x00asm\x01\x00\x00\x00 reviewed")
	filterDeployment(t, ns, "reviewed", digestOf(module))
	modulePath := cacheprotocol.ModulePath(strings.TrimPrefix(digestOf(module), "sha256:"))

	type call struct {
		token    string
		wantCode int
	}
	repeat := func(n int, c call) []call {
		out := make([]call, n)
		for i := range out {
			out[i] = c
		}
		return out
	}
	garbage := func(n int) []call {
		out := make([]call, n)
		for i := range out {
			out[i] = call{fmt.Sprintf("garbage-%d", i), 401}
		}
		return out
	}
	tests := []struct {
		name        string
		burst       int
		calls       []call
		wantReviews int32
	}{
		{name: "accepted token, remembered", calls: repeat(5, call{good, 200}), wantReviews: 1},
		{name: "wrong audience, refused once and remembered", calls: repeat(5, call{apiAudience, 401}), wantReviews: 1},
		{name: "oversize token, never reviewed", calls: repeat(3, call{strings.Repeat("x", cacheprotocol.MaxTokenBytes+1), 401}), wantReviews: 0},
		{name: "token at the size limit is reviewed", calls: []call{{strings.Repeat("x", cacheprotocol.MaxTokenBytes), 401}}, wantReviews: 1},
		{
			name:  "new bad tokens past the budget are not reviewed",
			burst: 3,
			calls: append(append(garbage(3), call{"garbage-4", 429}, call{"garbage-5", 429}),
				// The wrong-audience token is new too: it waits as well.
				call{apiAudience, 429}),
			wantReviews: 3,
		},
		{
			name:  "a token accepted before the budget ran out still works",
			burst: 2,
			calls: append(append([]call{{good, 200}}, garbage(2)...),
				call{"garbage-3", 429}, call{good, 200}),
			wantReviews: 3,
		},
	}
	reader := env.IndexedReader(t, cacheprotocol.IndexFilterDeployments)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, reviews := reviewCounter(t)
			srv, err := cacheprotocol.New(cacheprotocol.Options{
				Client:        reader,
				Authenticator: cacheprotocol.NewTokenReviewAuthenticator(c, time.Minute, cacheprotocol.Audience),
				AllowedUsers:  []string{"system:serviceaccount:" + ns + ":wasme-cache"},
				Registerer:    prometheus.NewRegistry(),
				RejectBurst:   tc.burst,
				// Refills too slowly to matter while the test runs.
				RejectRate: rate.Every(24 * time.Hour),
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := srv.Put(digestOf(module), module); err != nil {
				t.Fatal(err)
			}
			ts := httptest.NewServer(srv)
			defer ts.Close()
			for i, c := range tc.calls {
				code, body, hdr := do(t, ts.URL, "GET", modulePath, c.token, nil)
				if code != c.wantCode {
					t.Fatalf("call %d: status %d, want %d; body %q", i, code, c.wantCode, body)
				}
				if code == 429 && hdr.Get("Retry-After") == "" {
					t.Errorf("call %d: 429 without Retry-After", i)
				}
			}
			if got := reviews.Load(); got != tc.wantReviews {
				t.Errorf("%d TokenReviews, want %d", got, tc.wantReviews)
			}
		})
	}
}
