package v1_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/config/samples"
	"wasme.io/wasme/internal/testing/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &env)) }

// create decodes a FilterDeployment from YAML into ns and creates it as kubectl does, with
// strict field validation.
func create(ctx context.Context, ns, doc string) (*unstructured.Unstructured, error) {
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
		return nil, fmt.Errorf("test YAML: %w", err)
	}
	u.SetNamespace(ns)
	return u, env.Client.Create(ctx, u, client.FieldValidation(metav1.FieldValidationStrict))
}

func TestSeedFilterDeploymentIsAccepted(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t)
	if _, err := create(ctx, ns, samples.BookinfoCustomFilter(samples.SampleRegistry)); err != nil {
		t.Fatalf("the seed's FilterDeployment was refused: %v", err)
	}

	var fd wasmev1.FilterDeployment
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "bookinfo-custom-filter"}, &fd); err != nil {
		t.Fatal(err)
	}
	if got := fd.Spec.Filter.Image; got != "registry.example.com/ryysud/custom-header:v0.1" {
		t.Errorf("image = %q", got)
	}
	if got := fd.Spec.Deployment.Istio.IstioNamespace; got != "istio-system" {
		t.Errorf("istioNamespace default = %q, want istio-system", got)
	}
	if got := fd.Spec.Delivery; got != wasmev1.DeliveryAuto {
		t.Errorf("delivery default = %q, want auto", got)
	}
	if got := fd.FilterID(); got != "bookinfo-custom-filter."+ns {
		t.Errorf("FilterID() = %q", got)
	}

	// `kubectl get fd` asks the server for a Table and prints its columns.
	cs := kubernetes.NewForConfigOrDie(env.Config)
	raw, err := cs.RESTClient().Get().AbsPath("/apis/wasme.io/v1/namespaces", ns, "filterdeployments").
		SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var table metav1.Table
	if err := yaml.Unmarshal(raw, &table); err != nil {
		t.Fatal(err)
	}
	var cols []string
	for _, c := range table.ColumnDefinitions {
		if c.Priority == 0 {
			cols = append(cols, c.Name)
		}
	}
	if got, want := strings.Join(cols, " "), "Name Image Ready Workloads Programmed Proxies Age"; got != want {
		t.Errorf("kubectl get fd columns = %q, want %q", got, want)
	}
	if len(table.Rows) != 1 || table.Rows[0].Cells[1] != "registry.example.com/ryysud/custom-header:v0.1" {
		t.Errorf("table rows = %v", table.Rows)
	}
}

func TestShortNameAndCategory(t *testing.T) {
	cs := kubernetes.NewForConfigOrDie(env.Config)
	list, err := cs.Discovery().ServerResourcesForGroupVersion(wasmev1.GroupVersion.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range list.APIResources {
		if r.Name == "filterdeployments" {
			if !strings.Contains(strings.Join(r.ShortNames, ","), "fd") || !strings.Contains(strings.Join(r.Categories, ","), "wasme") {
				t.Errorf("short names %v, categories %v", r.ShortNames, r.Categories)
			}
			if !r.Namespaced {
				t.Error("FilterDeployment must be namespaced")
			}
			return
		}
	}
	t.Fatal("filterdeployments not served")
}

// fd builds a FilterDeployment document with the given spec.
func fd(spec string) string {
	return "apiVersion: wasme.io/v1\nkind: FilterDeployment\nmetadata:\n  generateName: fd-\nspec:\n" + spec
}

const validDeployment = `  deployment:
    istio:
      kind: Deployment
`

func TestValidSpecsAreAccepted(t *testing.T) {
	digest := "sha256:" + strings.Repeat("ab", 32)
	cases := map[string]string{
		"plain string config": validDeployment + "  filter:\n    image: registry.example.com/f:v1\n    config: world\n",
		"StringValue config": validDeployment + "  filter:\n    image: registry.example.com/f:v1\n" +
			"    config: {'@type': type.googleapis.com/google.protobuf.StringValue, value: world}\n",
		"Struct config": validDeployment + "  filter:\n    image: registry.example.com/f:v1\n" +
			"    config: {'@type': type.googleapis.com/google.protobuf.Struct, value: {header: x-a, n: 2}}\n",
		"BytesValue config": validDeployment + "  filter:\n    image: registry.example.com/f:v1\n" +
			"    config: {'@type': type.googleapis.com/google.protobuf.BytesValue, value: aGVsbG8=}\n",
		"plain object config": validDeployment + "  filter:\n    image: registry.example.com/f:v1\n" +
			"    config: {header: {name: hello, value: world}, value: not an Any}\n",
		"WasmPlugin controls": validDeployment + `  filter:
    image: registry.example.com/f:v1
    match:
    - mode: SERVER
      ports: [9080, 9443]
    - mode: CLIENT
    failStrategy: FailOpen
    phase: AUTHZ
    priority: -1000
    vmConfig:
      env:
      - name: GREETING
        value: hello
      - name: POD_NAME
        valueFrom: HOST
`,
		"lower-case kind":  "  deployment:\n    istio:\n      kind: daemonset\n  filter:\n    image: f\n",
		"upper-case kind":  "  deployment:\n    istio:\n      kind: STATEFULSET\n  filter:\n    image: f\n",
		"kind defaulted":   "  deployment:\n    istio: {}\n  filter:\n    image: f\n",
		"delivery ecds":    validDeployment + "  filter:\n    image: f\n  delivery: ecds\n",
		"delivery mount":   validDeployment + "  filter:\n    image: f\n  delivery: mount\n",
		"digest reference": validDeployment + "  filter:\n    image: registry.example.com/team/f@" + digest + "\n",
		"tag and digest":   validDeployment + "  filter:\n    image: localhost:5000/f:v1@" + digest + "\n",
		"all options": `  deployment:
    istio:
      kind: Deployment
      istioNamespace: istio-1-24
      istioVersion: "1.24.2"
      labels:
        app: details
        app.kubernetes.io/version: v1.2_3
        empty: ""
  filter:
    id: my-filter.v2
    image: registry.example.com:5443/a/b/c:latest
    rootID: add_header
    patchContext: Outbound
    imagePullOptions:
      pullSecret: regcred
      insecureSkipVerify: true
      plainHttp: true
`,
	}
	for name, spec := range cases {
		t.Run(name, func(t *testing.T) {
			ns := env.Namespace(t)
			if _, err := create(context.Background(), ns, fd(spec)); err != nil {
				t.Fatalf("refused: %v", err)
			}
		})
	}
}

func TestInvalidSpecsAreRefused(t *testing.T) {
	cases := []struct {
		name string
		spec string
		want []string // substrings of the API server's message
	}{
		{"missing filter", validDeployment, []string{"spec.filter: Required value"}},
		{"missing deployment", "  filter:\n    image: f\n", []string{"spec.deployment: Required value"}},
		{"missing image", validDeployment + "  filter:\n    id: x\n", []string{"spec.filter.image: Required value"}},
		{"empty image", validDeployment + "  filter:\n    image: \"\"\n", []string{"spec.filter.image", "at least 1 chars"}},
		{"malformed image", validDeployment + "  filter:\n    image: 'not a ref!'\n", []string{"spec.filter.image", "must be an OCI image reference"}},
		{"upper-case repository", validDeployment + "  filter:\n    image: registry.example.com/Filters/f:v1\n", []string{"spec.filter.image", "must be an OCI image reference"}},
		{"short digest", validDeployment + "  filter:\n    image: f@sha256:abc\n", []string{"spec.filter.image", "must be an OCI image reference"}},
		{"unknown kind", "  deployment:\n    istio:\n      kind: Pod\n  filter:\n    image: f\n", []string{"spec.deployment.istio.kind", "must be one of Deployment, DaemonSet, StatefulSet"}},
		{"unknown patchContext", validDeployment + "  filter:\n    image: f\n    patchContext: sideways\n", []string{"spec.filter.patchContext", "must be one of any, inbound, outbound, gateway"}},
		{"unknown delivery", validDeployment + "  filter:\n    image: f\n  delivery: push\n", []string{"spec.delivery", `supported values: "auto", "ecds", "mount"`}},
		{"invalid label value", "  deployment:\n    istio:\n      labels:\n        app: 'not valid!'\n  filter:\n    image: f\n", []string{"spec.deployment.istio.labels", "must be a valid label value"}},
		{"label value too long", "  deployment:\n    istio:\n      labels:\n        app: " + strings.Repeat("a", 64) + "\n  filter:\n    image: f\n", []string{"spec.deployment.istio.labels", "63"}},
		{"invalid label key", "  deployment:\n    istio:\n      labels:\n        'bad key': x\n  filter:\n    image: f\n", []string{"spec.deployment.istio.labels", "keys must be valid label keys"}},
		{"unknown field under spec", validDeployment + "  filter:\n    image: f\n  extra: 1\n", []string{`unknown field "spec.extra"`}},
		{"unknown field under filter", validDeployment + "  filter:\n    image: f\n    imageName: g\n", []string{`unknown field "spec.filter.imageName"`}},
		{"invalid id", validDeployment + "  filter:\n    image: f\n    id: My_Filter\n", []string{"spec.filter.id", "lower case alphanumerics"}},
		{"invalid pull secret", validDeployment + "  filter:\n    image: f\n    imagePullOptions:\n      pullSecret: 'a/b'\n", []string{"spec.filter.imagePullOptions.pullSecret"}},
		{"invalid istio version", "  deployment:\n    istio:\n      istioVersion: latest\n  filter:\n    image: f\n", []string{"spec.deployment.istio.istioVersion", "must be a version"}},
		{"config a number", validDeployment + "  filter:\n    image: f\n    config: 42\n", []string{"spec.filter.config must be a string or an object"}},
		{"config a list", validDeployment + "  filter:\n    image: f\n    config: [a]\n", []string{"spec.filter.config must be a string or an object"}},
		{"config a boolean", validDeployment + "  filter:\n    image: f\n    config: true\n", []string{"spec.filter.config must be a string or an object"}},
		{"config @type not a string", validDeployment + "  filter:\n    image: f\n    config: {'@type': 1, value: x}\n", []string{`spec.filter.config["@type"] must be one of`}},
		{"match with patchContext", validDeployment + "  filter:\n    image: f\n    patchContext: inbound\n    match: [{mode: SERVER}]\n", []string{"patchContext and match are exclusive"}},
		{"unknown match mode", validDeployment + "  filter:\n    image: f\n    match: [{mode: INBOUND}]\n", []string{"spec.filter.match[0].mode", `supported values: "CLIENT", "SERVER", "CLIENT_AND_SERVER"`}},
		{"port out of range", validDeployment + "  filter:\n    image: f\n    match: [{ports: [9080, 70000]}]\n", []string{"spec.filter.match[0].ports[1]", "less than or equal to 65535"}},
		{"port zero", validDeployment + "  filter:\n    image: f\n    match: [{ports: [0]}]\n", []string{"spec.filter.match[0].ports[0]", "greater than or equal to 1"}},
		{"unknown phase", validDeployment + "  filter:\n    image: f\n    phase: LAST\n", []string{"spec.filter.phase", `supported values: "AUTHN", "AUTHZ", "STATS", "UNSPECIFIED"`}},
		{"priority out of range", validDeployment + "  filter:\n    image: f\n    priority: 1001\n", []string{"spec.filter.priority", "less than or equal to 1000"}},
		{"unknown fail strategy", validDeployment + "  filter:\n    image: f\n    failStrategy: FailSometimes\n", []string{"spec.filter.failStrategy", `supported values: "FailClose", "FailOpen", "FailReload"`}},
		{"env with both value and host source", validDeployment + "  filter:\n    image: f\n    vmConfig:\n      env: [{name: A, valueFrom: HOST, value: x}]\n", []string{"spec.filter.vmConfig.env[0]", "value must be empty when valueFrom is HOST"}},
		{"env name with =", validDeployment + "  filter:\n    image: f\n    vmConfig:\n      env: [{name: 'A=B', value: x}]\n", []string{"spec.filter.vmConfig.env[0].name", "must not contain '='"}},
		{"env name twice", validDeployment + "  filter:\n    image: f\n    vmConfig:\n      env: [{name: A, value: x}, {name: A, value: y}]\n", []string{"spec.filter.vmConfig.env[1]", "Duplicate value"}},
		{"config unknown @type", validDeployment + "  filter:\n    image: f\n    config: {'@type': type.googleapis.com/foo.Bar, value: x}\n", []string{`spec.filter.config["@type"] must be one of`}},
		{"config extra key", validDeployment + "  filter:\n    image: f\n    config: {'@type': type.googleapis.com/google.protobuf.StringValue, value: x, other: y}\n", []string{`may only have the keys "@type" and "value"`}},
		{"config value of wrong type", validDeployment + "  filter:\n    image: f\n    config: {'@type': type.googleapis.com/google.protobuf.StringValue, value: {a: b}}\n", []string{"spec.filter.config.value must be a string"}},
		{"config string over 256 KiB", validDeployment + "  filter:\n    image: f\n    config: " + strings.Repeat("a", 256<<10+1) + "\n", []string{"spec.filter.config must be at most 256 KiB"}},
		{"StringValue config over 256 KiB", validDeployment + "  filter:\n    image: f\n    config: {'@type': type.googleapis.com/google.protobuf.StringValue, value: " + strings.Repeat("a", 256<<10+1) + "}\n", []string{"spec.filter.config must be at most 256 KiB"}},
		{"struct config value a string", validDeployment + "  filter:\n    image: f\n    config: {'@type': type.googleapis.com/google.protobuf.Struct, value: x}\n", []string{"an object for Struct"}},
	}
	ctx := context.Background()
	ns := env.Namespace(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := create(ctx, ns, fd(tc.spec))
			if err == nil {
				t.Fatal("accepted, want refused")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	var list wasmev1.FilterDeploymentList
	if err := env.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 0 {
		t.Errorf("%d refused FilterDeployments were stored", len(list.Items))
	}
}

// Updates go through the same checks as creates.
func TestInvalidUpdateIsRefused(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t)
	u, err := create(ctx, ns, fd(validDeployment+"  filter:\n    image: f\n    config: ok\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := unstructured.SetNestedField(u.Object, int64(7), "spec", "filter", "config"); err != nil {
		t.Fatal(err)
	}
	err = env.Client.Update(ctx, u)
	if err == nil || !strings.Contains(err.Error(), "spec.filter.config must be a string or an object") {
		t.Fatalf("update with a numeric config: err = %v", err)
	}
}
