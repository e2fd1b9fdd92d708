package v1_test

import (
	"context"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// The API server's checks of what issue 20 added: spec.filter.verify and the cluster-scoped
// FilterPolicy. Each rule has a case it refuses, with the field and message a user sees.

// policy builds a FilterPolicy document with the given spec (indented two spaces).
func policy(spec string) string {
	return "apiVersion: wasme.io/v1\nkind: FilterPolicy\nmetadata:\n  generateName: fpol-\nspec:\n" + spec
}

// createPolicy creates a cluster-scoped FilterPolicy as kubectl does, with strict field
// validation, and deletes it when the test ends.
func createPolicy(t *testing.T, doc string) error {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
		t.Fatalf("test YAML: %v", err)
	}
	err := env.Client.Create(context.Background(), u, client.FieldValidation(metav1.FieldValidationStrict))
	if err == nil {
		t.Cleanup(func() { _ = env.Client.Delete(context.Background(), u) })
	}
	return err
}

// verifyFD is a FilterDeployment whose spec.filter.verify is the given YAML (indented six).
func verifyFD(verify string) string {
	return fd(validDeployment + "  filter:\n    image: registry.example.com/f:v1\n    verify:\n" + verify)
}

func TestValidSigningSpecsAreAccepted(t *testing.T) {
	fds := map[string]string{
		"a ConfigMap key":                  "      keys: [{kind: ConfigMap, name: keys}]\n",
		"a Secret key of another data key": "      keys: [{kind: Secret, name: signing.keys, key: team-a.pub}]\n",
		"eight keys":                       "      keys: [" + strings.Repeat("{kind: ConfigMap, name: k}, ", 7) + "{kind: Secret, name: s}]\n",
	}
	for name, doc := range fds {
		t.Run("FilterDeployment/"+name, func(t *testing.T) {
			if _, err := create(context.Background(), env.Namespace(t), verifyFD(doc)); err != nil {
				t.Fatalf("refused: %v", err)
			}
		})
	}
	policies := map[string]string{
		"registries only":   "  allowedRegistries: [registry.example.com]\n",
		"keys only":         "  requiredKeys: [{kind: ConfigMap, name: filter-signing-keys}]\n",
		"registry and path": "  allowedRegistries: ['registry.example.com:5000', registry.example.com/team-a/filters]\n",
		"selector by labels and expressions": `  namespaceSelector:
    matchLabels:
      wasme.io/signed: required
    matchExpressions:
    - {key: team, operator: In, values: [a, b]}
    - {key: sandbox, operator: DoesNotExist}
    - {key: tier, operator: Exists, values: []}
    - {key: env, operator: NotIn, values: [dev]}
  allowedRegistries: [registry.example.com]
  requiredKeys: [{kind: Secret, name: keys, key: cosign.pub}]
`,
	}
	for name, spec := range policies {
		t.Run("FilterPolicy/"+name, func(t *testing.T) {
			if err := createPolicy(t, policy(spec)); err != nil {
				t.Fatalf("refused: %v", err)
			}
		})
	}
}

func TestInvalidVerifyIsRefused(t *testing.T) {
	cases := []struct {
		name   string
		verify string
		want   []string
	}{
		{"no keys", "      {}\n", []string{"spec.filter.verify.keys: Required value"}},
		{"empty key list", "      keys: []\n", []string{"spec.filter.verify.keys", "at least 1 items"}},
		{"nine keys", "      keys: [" + strings.Repeat("{kind: ConfigMap, name: k}, ", 8) + "{kind: Secret, name: s}]\n", []string{"spec.filter.verify.keys", "must have at most 8 items"}},
		{"key without kind", "      keys: [{name: keys}]\n", []string{"spec.filter.verify.keys[0].kind: Required value"}},
		{"unknown kind", "      keys: [{kind: File, name: keys}]\n", []string{"spec.filter.verify.keys[0].kind", `supported values: "Secret", "ConfigMap"`}},
		{"kind in lower case", "      keys: [{kind: secret, name: keys}]\n", []string{"spec.filter.verify.keys[0].kind", "Unsupported value"}},
		{"key without name", "      keys: [{kind: Secret}]\n", []string{"spec.filter.verify.keys[0].name: Required value"}},
		{"empty name", "      keys: [{kind: Secret, name: ''}]\n", []string{"spec.filter.verify.keys[0].name", "at least 1 chars"}},
		{"malformed name", "      keys: [{kind: Secret, name: Keys_1}]\n", []string{"spec.filter.verify.keys[0].name", "must be the name of a Secret or ConfigMap"}},
		{"name too long", "      keys: [{kind: Secret, name: " + strings.Repeat("a", 254) + "}]\n", []string{"spec.filter.verify.keys[0].name", "253"}},
		{"malformed data key", "      keys: [{kind: ConfigMap, name: keys, key: 'a/b'}]\n", []string{"spec.filter.verify.keys[0].key", "must be a Secret or ConfigMap data key"}},
		{"data key too long", "      keys: [{kind: ConfigMap, name: keys, key: " + strings.Repeat("a", 254) + "}]\n", []string{"spec.filter.verify.keys[0].key", "253"}},
		{"unknown field", "      keys: [{kind: ConfigMap, name: keys}]\n      keyless: true\n", []string{`unknown field "spec.filter.verify.keyless"`}},
		{"unknown key field", "      keys: [{kind: ConfigMap, name: keys, namespace: other}]\n", []string{`unknown field "spec.filter.verify.keys[0].namespace"`}},
	}
	ctx := context.Background()
	ns := env.Namespace(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := create(ctx, ns, verifyFD(tc.verify))
			assertRefused(t, err, tc.want)
		})
	}
}

func TestInvalidFilterPolicyIsRefused(t *testing.T) {
	cases := []struct {
		name string
		doc  string
		want []string
	}{
		{"no spec", "apiVersion: wasme.io/v1\nkind: FilterPolicy\nmetadata:\n  generateName: fpol-\n", []string{"spec: Required value"}},
		{"empty spec", policy("  {}\n"), []string{"set allowedRegistries, requiredKeys or both"}},
		{"selector only", policy("  namespaceSelector: {matchLabels: {a: b}}\n"), []string{"set allowedRegistries, requiredKeys or both"}},
		{"empty registry list", policy("  allowedRegistries: []\n"), []string{"spec.allowedRegistries", "at least 1 items"}},
		{"65 registries", policy("  allowedRegistries: [" + strings.Repeat("r.example.com, ", 64) + "r.example.com]\n"), []string{"spec.allowedRegistries", "must have at most 64 items"}},
		{"registry with a scheme", policy("  allowedRegistries: ['https://registry.example.com']\n"), []string{"spec.allowedRegistries[0]", "must be a registry host[:port], optionally followed by a repository path"}},
		{"registry with a tag", policy("  allowedRegistries: ['registry.example.com/f:v1']\n"), []string{"spec.allowedRegistries[0]", "must be a registry host[:port]"}},
		{"registry with a trailing slash", policy("  allowedRegistries: [registry.example.com, 'registry.example.com/']\n"), []string{"spec.allowedRegistries[1]", "must be a registry host[:port]"}},
		{"registry path in upper case", policy("  allowedRegistries: [registry.example.com/Team]\n"), []string{"spec.allowedRegistries[0]", "must be a registry host[:port]"}},
		{"empty registry", policy("  allowedRegistries: ['']\n"), []string{"spec.allowedRegistries[0]", "must be a registry host[:port]"}},
		{"registry too long", policy("  allowedRegistries: [registry.example.com/" + strings.Repeat("a", 512) + "]\n"), []string{"spec.allowedRegistries[0]", "512"}},
		{"empty key list", policy("  requiredKeys: []\n"), []string{"spec.requiredKeys", "at least 1 items"}},
		{"nine keys", policy("  requiredKeys: [" + strings.Repeat("{kind: ConfigMap, name: k}, ", 8) + "{kind: Secret, name: s}]\n"), []string{"spec.requiredKeys", "must have at most 8 items"}},
		{"key of unknown kind", policy("  requiredKeys: [{kind: Namespace, name: keys}]\n"), []string{"spec.requiredKeys[0].kind", "Unsupported value"}},
		{"key without name", policy("  requiredKeys: [{kind: ConfigMap}]\n"), []string{"spec.requiredKeys[0].name: Required value"}},
		{"malformed key name", policy("  requiredKeys: [{kind: ConfigMap, name: 'a b'}]\n"), []string{"spec.requiredKeys[0].name", "must be the name of a Secret or ConfigMap"}},
		{"malformed data key", policy("  requiredKeys: [{kind: ConfigMap, name: keys, key: 'x y'}]\n"), []string{"spec.requiredKeys[0].key", "must be a Secret or ConfigMap data key"}},
		{"unknown selector operator", policy("  namespaceSelector:\n    matchExpressions: [{key: a, operator: Equals, values: [b]}]\n  allowedRegistries: [r.example.com]\n"),
			[]string{"spec.namespaceSelector", "operator must be one of In, NotIn, Exists, DoesNotExist"}},
		{"In without values", policy("  namespaceSelector:\n    matchExpressions: [{key: a, operator: In}]\n  allowedRegistries: [r.example.com]\n"),
			[]string{"spec.namespaceSelector", "In and NotIn need values"}},
		{"NotIn with empty values", policy("  namespaceSelector:\n    matchExpressions: [{key: a, operator: NotIn, values: []}]\n  allowedRegistries: [r.example.com]\n"),
			[]string{"spec.namespaceSelector", "In and NotIn need values"}},
		{"Exists with values", policy("  namespaceSelector:\n    matchExpressions: [{key: a, operator: Exists, values: [b]}]\n  allowedRegistries: [r.example.com]\n"),
			[]string{"spec.namespaceSelector", "Exists and DoesNotExist take no values"}},
		{"selector expression without key", policy("  namespaceSelector:\n    matchExpressions: [{operator: Exists}]\n  allowedRegistries: [r.example.com]\n"),
			[]string{"spec.namespaceSelector.matchExpressions[0].key: Required value"}},
		{"unknown field", policy("  allowedRegistries: [r.example.com]\n  requiredIdentity: x\n"), []string{`unknown field "spec.requiredIdentity"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assertRefused(t, createPolicy(t, tc.doc), tc.want)
		})
	}
}

// Updates of a FilterPolicy go through the same checks as creates.
func TestInvalidFilterPolicyUpdateIsRefused(t *testing.T) {
	ctx := context.Background()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(policy("  allowedRegistries: [registry.example.com]\n")), &u.Object); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, u); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(ctx, u) })
	unstructured.RemoveNestedField(u.Object, "spec", "allowedRegistries")
	if err := env.Client.Update(ctx, u); err == nil || !strings.Contains(err.Error(), "set allowedRegistries, requiredKeys or both") {
		t.Fatalf("update emptying the policy: err = %v", err)
	}
}

func assertRefused(t *testing.T, err error, want []string) {
	t.Helper()
	if err == nil {
		t.Fatal("accepted, want refused")
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
}
