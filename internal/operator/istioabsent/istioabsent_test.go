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

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
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
		eventually(t, reason+" "+message, func() (bool, string) {
			got := &wasmev1.FilterDeployment{}
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(fd), got); err != nil {
				return false, err.Error()
			}
			c := apimeta.FindStatusCondition(got.Status.Conditions, wasmev1.ReadyCondition)
			return c != nil && c.Reason == reason && strings.Contains(c.Message, message), fmt.Sprintf("status %+v", got.Status)
		})
	}
	waitReason(wasmev1.IstioNotFoundReason, "EnvoyFilter API (networking.istio.io) is not installed")

	if err := env.InstallIstioCRDs(); err != nil {
		t.Fatal(err)
	}
	// The operator notices by itself (a retry), and goes on to the next step.
	waitReason(wasmev1.CachePendingReason, "no node cache is ready")
}

// Deleting a FilterDeployment after Istio's CRDs are gone completes: no EnvoyFilter API means no
// EnvoyFilter left, and the FilterDeployment (and its namespace) must not stay Terminating.
func TestDeletionWithoutEnvoyFilterAPI(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := env.InstallIstioCRDs(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- operator.Run(ctx, env.Config, operator.Options{
			MetricsAddr: "0", ProbeAddr: "0", ModuleAddr: "127.0.0.1:0", Scheme: env.Scheme, SkipNameValidation: true,
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
	labels := map[string]string{"app": "w"}
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "w"}, Spec: appsv1.DeploymentSpec{
		Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}}},
	}}
	nc := &wasmev1.NodeCache{ObjectMeta: metav1.ObjectMeta{Name: "node-del"}}
	for _, o := range []client.Object{d, nc} {
		if err := env.Client.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	defer func() { _ = env.Client.Delete(context.Background(), nc) }()
	nc.Status.Conditions = []metav1.Condition{{Type: wasmev1.ReadyCondition, Status: metav1.ConditionTrue, Reason: "Serving", LastTransitionTime: metav1.Now()}}
	now := metav1.Now()
	nc.Status.HeartbeatTime = &now
	nc.Status.Modules = []wasmev1.NodeCacheModule{{Digest: moduleDigest, State: wasmev1.ModuleReady, LastTransitionTime: metav1.Now()}}
	if err := env.Client.Status().Update(ctx, nc); err != nil {
		t.Fatal(err)
	}
	fd := &wasmev1.FilterDeployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "f"}, Spec: wasmev1.FilterDeploymentSpec{
		Filter:     wasmev1.FilterSpec{Image: "registry.example.com/f:v1"},
		Deployment: wasmev1.DeploymentSpec{Istio: wasmev1.IstioDeploymentSpec{Kind: "Deployment", IstioVersion: "1.24"}},
	}}
	if err := env.Client.Create(ctx, fd); err != nil {
		t.Fatal(err)
	}
	eventually(t, "Ready", func() (bool, string) {
		got := &wasmev1.FilterDeployment{}
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(fd), got); err != nil {
			return false, err.Error()
		}
		return apimeta.IsStatusConditionTrue(got.Status.Conditions, wasmev1.ReadyCondition), fmt.Sprintf("%+v", got.Status.Conditions)
	})

	// Istio is uninstalled: its CRDs go, and with them every EnvoyFilter.
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := env.Client.Get(ctx, client.ObjectKey{Name: "envoyfilters.networking.istio.io"}, crd); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Delete(ctx, crd); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the EnvoyFilter CRD to go", func() (bool, string) {
		err := env.Client.Get(ctx, client.ObjectKeyFromObject(crd), &apiextensionsv1.CustomResourceDefinition{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})

	if err := env.Client.Delete(ctx, fd); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the FilterDeployment to be deleted", func() (bool, string) {
		err := env.Client.Get(ctx, client.ObjectKeyFromObject(fd), &wasmev1.FilterDeployment{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
	eventually(t, "the workload released", func() (bool, string) {
		got := &appsv1.Deployment{}
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(d), got); err != nil {
			return false, err.Error()
		}
		return len(got.Spec.Template.Annotations) == 0 && got.Annotations[operator.OriginalAnnotation] == "",
			fmt.Sprintf("%v %v", got.Annotations, got.Spec.Template.Annotations)
	})
}

// eventually polls cond until it holds, failing t with its last message after a minute.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %s", what, msg)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
