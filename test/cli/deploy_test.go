// Package cli tests `wasme deploy istio` and `wasme undeploy istio` against a real API server
// and a running operator.
package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	networkingv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/cli"
	"wasme.io/wasme/internal/operator"
	"wasme.io/wasme/internal/testing/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &env)) }

// oneModule stands in for a registry: this test is about the CLI; pulls are the operator's.
type oneModule struct{}

var module = []byte("\x00asm\x01\x00\x00\x00")

func (oneModule) Resolve(context.Context, string, operator.PullOptions) (string, error) {
	return fmt.Sprintf("sha256:%x", sha256.Sum256([]byte("manifest"))), nil
}

func (m oneModule) Fetch(ctx context.Context, ref string, o operator.PullOptions) (*operator.Image, error) {
	d, _ := m.Resolve(ctx, ref, o)
	return &operator.Image{ManifestDigest: d, ModuleDigest: fmt.Sprintf("sha256:%x", sha256.Sum256(module)), Module: module, RootIDs: []string{"add_header"}}, nil
}

func run(t *testing.T, args ...string) (string, error) {
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := cli.Run(ctx, args, &out, &errOut)
	return out.String() + errOut.String(), err
}

func TestDeployAndUndeployIstio(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_ = operator.Run(ctx, env.Config, operator.Options{
			MetricsAddr: "0", ProbeAddr: "0", ModuleAddr: "127.0.0.1:0", Scheme: env.Scheme,
			Images: oneModule{}, Validate: func(context.Context, []byte, string, []byte) error { return nil },
		})
	}()
	c := env.Client
	ns := env.Namespace(t)
	kc := env.Kubeconfig(t)
	// istiod, a workload and a node cache holding the module.
	for _, n := range []string{"istio-system"} {
		_ = c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}})
	}
	istiod := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "istiod"}, Spec: podSpec("istiod", "discovery", "registry.example.com/istio/pilot:1.24.0")}
	app := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "details-v1", Labels: map[string]string{"app": "details"}}, Spec: podSpec("details", "app", "app:1")}
	for _, o := range []client.Object{istiod, app} {
		if err := c.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	nc := &wasmev1.NodeCache{ObjectMeta: metav1.ObjectMeta{Name: "cli-node"}}
	if err := c.Create(ctx, nc); err != nil {
		t.Fatal(err)
	}
	nc.Status.Conditions = []metav1.Condition{{Type: wasmev1.ReadyCondition, Status: metav1.ConditionTrue, Reason: "Serving", LastTransitionTime: metav1.Now()}}
	nc.Status.Modules = []wasmev1.NodeCacheModule{{Digest: fmt.Sprintf("sha256:%x", sha256.Sum256(module)), State: wasmev1.ModuleReady}}
	heartbeat := metav1.Now()
	nc.Status.HeartbeatTime = &heartbeat
	if err := c.Status().Update(ctx, nc); err != nil {
		t.Fatal(err)
	}

	image := "registry.example.com/filters/custom-header:v1"
	out, err := run(t, "deploy", "istio", image, "--id", "hdr", "-n", ns, "--kubeconfig", kc, "--dry-run", "-l", "app=details", "--config", "x", "-o", "yaml")
	var dry wasmev1.FilterDeployment
	if err != nil || yaml.UnmarshalStrict([]byte(out), &dry) != nil || dry.Kind != "FilterDeployment" || string(dry.Spec.Filter.Config.Raw) != `"x"` {
		t.Fatalf("dry run -o yaml: %v\n%s", err, out)
	}
	out, err = run(t, "deploy", "istio", image, "--id", "hdr", "-n", ns, "--kubeconfig", kc, "--dry-run")
	if err != nil || !strings.Contains(out, "(dry run)") || !strings.Contains(out, "NAMESPACE") || !strings.Contains(out, image) {
		t.Fatalf("dry run, table: %v\n%s", err, out)
	}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "hdr"}, &wasmev1.FilterDeployment{}); err == nil {
		t.Fatal("a dry run created the FilterDeployment")
	}

	out, err = run(t, "deploy", "istio", image, "--id", "hdr", "-n", ns, "--kubeconfig", kc, "-l", "app=details")
	if err != nil || !strings.Contains(out, "details-v1: Succeeded") || !regexp.MustCompile(`(?m)^`+ns+` +hdr +\S+ +True +1$`).MatchString(out) {
		t.Fatalf("deploy: %v\n%s", err, out)
	}
	// Deploying again with -o json prints only the object as it stands once Ready.
	out, err = run(t, "deploy", "istio", image, "--id", "hdr", "-n", ns, "--kubeconfig", kc, "-l", "app=details", "-o", "json")
	var deployed wasmev1.FilterDeployment
	if err != nil || json.Unmarshal([]byte(out), &deployed) != nil {
		t.Fatalf("deploy -o json: %v\n%s", err, out)
	}
	if deployed.Kind != "FilterDeployment" || deployed.Status.Workloads["details-v1"].State != wasmev1.WorkloadSucceeded || !apimeta.IsStatusConditionTrue(deployed.Status.Conditions, wasmev1.ReadyCondition) {
		t.Fatalf("deploy -o json printed %+v", deployed)
	}
	var efs networkingv1alpha3.EnvoyFilterList
	if err := c.List(ctx, &efs, client.InNamespace(ns)); err != nil || len(efs.Items) != 1 || efs.Items[0].Name != "details-v1-hdr" {
		t.Fatalf("EnvoyFilters after deploy: %v %v", err, efs.Items)
	}

	out, err = run(t, "undeploy", "istio", "--id", "hdr", "-n", ns, "--kubeconfig", kc)
	if err != nil || !strings.Contains(out, "workloads restored") {
		t.Fatalf("undeploy: %v\n%s", err, out)
	}
	if err := c.List(ctx, &efs, client.InNamespace(ns)); err != nil || len(efs.Items) != 0 {
		t.Fatalf("EnvoyFilters after undeploy: %v %d", err, len(efs.Items))
	}
	d := &appsv1.Deployment{}
	if err := c.Get(ctx, client.ObjectKeyFromObject(app), d); err != nil || len(d.Spec.Template.Annotations) != 0 {
		t.Fatalf("workload after undeploy: %v %v", err, d.Spec.Template.Annotations)
	}
}

func TestDeployRefusesBadInput(t *testing.T) {
	kc := env.Kubeconfig(t)
	ns := env.Namespace(t)
	img := "registry.example.com/f:v1"
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no id", []string{"deploy", "istio", img}, "--id is required"},
		{"bad id", []string{"deploy", "istio", img, "--id", "Bad_ID"}, `--id "Bad_ID"`},
		{"no image", []string{"deploy", "istio", "--id", "x"}, "accepts 1 arg"},
		{"bad workload type", []string{"deploy", "istio", img, "--id", "x", "-t", "pod"}, "--workload-type"},
		{"bad patch context", []string{"deploy", "istio", img, "--id", "x", "--patch-context", "up"}, "--patch-context"},
		{"bad label value", []string{"deploy", "istio", img, "--id", "x", "-l", "app=not valid!", "--dry-run"}, "spec.deployment.istio.labels"},
		{"malformed image", []string{"deploy", "istio", "Not An Image", "--id", "x", "--dry-run"}, "spec.filter.image"},
		{"undeploy unknown", []string{"undeploy", "istio", "--id", "nothing-here"}, `no filter "nothing-here" deployed`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := run(t, append(tc.args, "-n", ns, "--kubeconfig", kc)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q\n%s", err, tc.want, out)
			}
		})
	}
}

func podSpec(app, container, image string) appsv1.DeploymentSpec {
	labels := map[string]string{"app": app}
	return appsv1.DeploymentSpec{
		Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: container, Image: image}}}},
	}
}
