// Package istioabsent runs the operator on a cluster without Istio: it must start, say so in
// the FilterDeployment's status, and carry on by itself once Istio is installed.
package istioabsent

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/operator"
	"wasme.io/wasme/internal/testing/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	os.Exit(testenv.MainWith(m, &env, testenv.Options{WithoutIstio: true}))
}

// fixedImages serves one module without a registry: this test is about Istio, and the
// registry path is covered by the operator's own tests.
type fixedImages struct{}

var (
	module       = []byte("\x00asm\x01\x00\x00\x00")
	moduleDigest = fmt.Sprintf("sha256:%x", sha256.Sum256(module))
)

func (fixedImages) Resolve(context.Context, string, operator.PullOptions) (string, error) {
	return "sha256:1111111111111111111111111111111111111111111111111111111111111111", nil
}

func (fixedImages) Fetch(_ context.Context, _ string, _ operator.PullOptions) (*operator.Image, error) {
	return &operator.Image{ManifestDigest: "sha256:1111111111111111111111111111111111111111111111111111111111111111",
		ModuleDigest: moduleDigest, Module: module, RootIDs: []string{"root"}}, nil
}

func TestOperatorWaitsForIstio(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- operator.Run(ctx, env.Config, operator.Options{
			MetricsAddr: "0", ProbeAddr: "0", ModuleAddr: "127.0.0.1:0", Scheme: env.Scheme,
			Images: fixedImages{}, Validate: func(context.Context, []byte, string, []byte) error { return nil },
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("operator: %v", err)
		}
	}()

	ns := env.Namespace(t)
	fd := &wasmev1.FilterDeployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "f"}, Spec: wasmev1.FilterDeploymentSpec{
		Filter:     wasmev1.FilterSpec{Image: "registry.example.com/f:v1"},
		Deployment: wasmev1.DeploymentSpec{Istio: wasmev1.IstioDeploymentSpec{Kind: "Deployment", IstioVersion: "1.24"}},
	}}
	if err := env.Client.Create(ctx, fd); err != nil {
		t.Fatal(err)
	}
	waitReason := func(reason, message string) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for {
			got := &wasmev1.FilterDeployment{}
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(fd), got); err != nil {
				t.Fatal(err)
			}
			c := apimeta.FindStatusCondition(got.Status.Conditions, wasmev1.ReadyCondition)
			if c != nil && c.Reason == reason && strings.Contains(c.Message, message) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s %q: status %+v", reason, message, got.Status)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitReason(wasmev1.IstioNotFoundReason, "EnvoyFilter API (networking.istio.io) is not installed")

	if err := env.InstallIstioCRDs(); err != nil {
		t.Fatal(err)
	}
	// The operator notices by itself (a retry), and goes on to the next step.
	waitReason(wasmev1.CachePendingReason, "no node cache is ready")
}
