// Package testenv runs a real kube-apiserver and etcd for tests, with the Istio CRDs from the
// pinned istio.io/istio module and wasme's own install (deploy/crds.yaml) applied, and hands
// out a client and a fresh namespace per test.
package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"wasme.io/wasme/internal/validation"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/cacheprotocol"
	"wasme.io/wasme/internal/kube"
	"wasme.io/wasme/internal/testing/tools"
)

// Env is a running API server.
type Env struct {
	// Config reaches the API server as an administrator.
	Config *rest.Config
	// Client is a controller-runtime client with the wasme, Istio and built-in types.
	Client client.Client
	// Scheme has the wasme, Istio networking and built-in types.
	Scheme *k8sruntime.Scheme

	env *envtest.Environment
}

// Scheme builds a scheme with every type the tests and the operator use.
func Scheme() (*k8sruntime.Scheme, error) { return kube.Scheme() }

// IstioCRDs is the path of the Istio CRD bundle in the pinned istio.io/istio module, downloaded
// into the module cache if needed. ISTIO_CRDS overrides it.
func IstioCRDs() (string, error) {
	if p := os.Getenv("ISTIO_CRDS"); p != "" {
		return p, nil
	}
	dir, err := tools.IstioDir()
	if err != nil {
		return "", fmt.Errorf("locating the istio.io/istio module: %w", err)
	}
	return filepath.Join(dir, "manifests", "charts", "base", "files", "crd-all.gen.yaml"), nil
}

// Options change what Start installs.
type Options struct {
	// WithoutIstio leaves the Istio CRDs out, for tests of a cluster without Istio.
	WithoutIstio bool
}

// Start starts etcd and kube-apiserver from KUBEBUILDER_ASSETS, installs the Istio CRDs and
// applies deploy/crds.yaml.
func Start() (*Env, error) { return StartWith(Options{}) }

// StartWith is Start with options.
func StartWith(o Options) (*Env, error) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		return nil, errors.New("KUBEBUILDER_ASSETS is not set: run the tests with `make test`, " +
			"or export KUBEBUILDER_ASSETS=$(hack/tools/build.sh --assets)")
	}
	istioCRDs, err := IstioCRDs()
	if err != nil {
		return nil, err
	}
	scheme, err := Scheme()
	if err != nil {
		return nil, err
	}
	var crdPaths []string
	if !o.WithoutIstio {
		crdPaths = []string{istioCRDs}
	}
	env := &envtest.Environment{
		Scheme: scheme,
		CRDInstallOptions: envtest.CRDInstallOptions{
			Paths:              crdPaths,
			ErrorIfPathMissing: true,
		},
		ControlPlaneStartTimeout: 2 * time.Minute,
		ControlPlaneStopTimeout:  time.Minute,
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("starting the API server: %w", err)
	}
	e := &Env{Config: cfg, Scheme: scheme, env: env}
	if e.Client, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		_ = env.Stop()
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.ApplyFile(ctx, filepath.Join(tools.RepoRoot(), "deploy", "crds.yaml")); err != nil {
		_ = env.Stop()
		return nil, fmt.Errorf("installing deploy/crds.yaml: %w", err)
	}
	if err := e.waitEstablished(ctx); err != nil {
		_ = env.Stop()
		return nil, err
	}
	if err := e.waitPolicy(ctx); err != nil {
		_ = env.Stop()
		return nil, err
	}
	// The operator's namespace, where it keeps the module server's certificate, exists in a
	// cluster before the operator starts (deploy/wasme.yaml makes it).
	if err := e.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "wasme"}}); err != nil && !apierrors.IsAlreadyExists(err) {
		_ = env.Stop()
		return nil, fmt.Errorf("creating namespace wasme: %w", err)
	}
	return e, nil
}

// InstallIstioCRDs installs the Istio CRDs into an Env started without them.
func (e *Env) InstallIstioCRDs() error {
	path, err := IstioCRDs()
	if err != nil {
		return err
	}
	_, err = envtest.InstallCRDs(e.Config, envtest.CRDInstallOptions{Paths: []string{path}, ErrorIfPathMissing: true})
	return err
}

// ServiceAccountConfig returns a rest.Config authenticating as an existing ServiceAccount, and
// its token, from the TokenRequest API (valid a day). Running a component with it gives the
// component exactly the RBAC it ships with, as in a cluster.
func (e *Env) ServiceAccountConfig(ctx context.Context, ns, name string) (*rest.Config, string, error) {
	cs, err := kubernetes.NewForConfig(e.Config)
	if err != nil {
		return nil, "", err
	}
	exp := int64(24 * 3600)
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		return nil, "", fmt.Errorf("token for %s/%s: %w", ns, name, err)
	}
	cfg := rest.AnonymousClientConfig(e.Config)
	cfg.BearerToken = tr.Status.Token
	return cfg, tr.Status.Token, nil
}

// AudienceToken returns a token of an existing ServiceAccount for audience, from the
// TokenRequest API (valid a day).
func (e *Env) AudienceToken(ctx context.Context, ns, name, audience string) (string, error) {
	cs, err := kubernetes.NewForConfig(e.Config)
	if err != nil {
		return "", err
	}
	exp := int64(24 * 3600)
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp, Audiences: []string{audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token of audience %s for %s/%s: %w", audience, ns, name, err)
	}
	return tr.Status.Token, nil
}

// PodBoundToken returns a token of ServiceAccount ns/name bound to a pod on node, as the
// kubelet projects it into a DaemonSet's pod: the API server puts the pod's node into the
// token (user extra authentication.kubernetes.io/node-name), which admission policies can
// check. The pod (ns/<name>-<node>, created if missing) never runs, since envtest has no
// kubelet; it only anchors the binding. audience empty means the API server's own; ttl is at
// least ten minutes (the API server's minimum for bound tokens).
func (e *Env) PodBoundToken(ctx context.Context, ns, name, node, audience string, ttl time.Duration) (string, error) {
	cs, err := kubernetes.NewForConfig(e.Config)
	if err != nil {
		return "", err
	}
	podName := name + "-" + node
	pod, err := cs.CoreV1().Pods(ns).Get(ctx, podName, metav1.GetOptions{})
	if err != nil {
		pod, err = cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: podName},
			Spec: corev1.PodSpec{
				ServiceAccountName: name, NodeName: node,
				Containers: []corev1.Container{{Name: "main", Image: "registry.example.com/none:v1"}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			return "", fmt.Errorf("creating pod %s/%s to bind a token to: %w", ns, podName, err)
		}
	}
	exp := int64(max(ttl, 10*time.Minute) / time.Second)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: &exp,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID},
	}}
	if audience != "" {
		req.Spec.Audiences = []string{audience}
	}
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("pod-bound token for %s/%s on node %s: %w", ns, name, node, err)
	}
	return tr.Status.Token, nil
}

// NodeCacheConfig is the config of the node cache on node: ServiceAccount ns/wasme-cache's
// token bound to a pod on that node, as the kubelet mounts it. The NodeCache admission policy
// lets a wasme-cache token write only the NodeCache of the node it is bound to.
func (e *Env) NodeCacheConfig(ctx context.Context, ns, node string) (*rest.Config, error) {
	token, err := e.PodBoundToken(ctx, ns, "wasme-cache", node, "", 24*time.Hour)
	if err != nil {
		return nil, err
	}
	return e.TokenConfig(token), nil
}

// CacheToken is the token the node cache on node presents to the module server: ServiceAccount
// ns/wasme-cache's, bound to a pod on node, of audience cacheprotocol.Audience, as the
// DaemonSet's projected volume holds it.
func (e *Env) CacheToken(ctx context.Context, ns, node string) (string, error) {
	return e.PodBoundToken(ctx, ns, "wasme-cache", node, cacheprotocol.Audience, 24*time.Hour)
}

// TokenConfig returns a rest.Config that authenticates with token alone.
func (e *Env) TokenConfig(token string) *rest.Config {
	cfg := rest.AnonymousClientConfig(e.Config)
	cfg.BearerToken = token
	return cfg
}

// Stop stops the API server and etcd.
func (e *Env) Stop() error { return e.env.Stop() }

// Main is a TestMain body: it starts an Env, runs the tests and stops it.
func Main(m *testing.M, env **Env) int { return MainWith(m, env, Options{}) }

// MainWith is Main with options.
func MainWith(m *testing.M, env **Env, o Options) int {
	// Operators started by the tests validate modules in children of this binary.
	validation.ServeChildIfAsked()
	e, err := StartWith(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		return 1
	}
	*env = e
	code := m.Run()
	if err := e.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "testenv: stopping:", err)
	}
	return code
}

// Namespace creates a namespace for one test and deletes it when the test ends.
func (e *Env) Namespace(t testing.TB) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "test-"}}
	if err := e.Client.Create(context.Background(), ns); err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	t.Cleanup(func() { _ = e.Client.Delete(context.Background(), ns) })
	return ns.Name
}

// ApplyFile server-side applies every object of a multi-document YAML file.
func (e *Env) ApplyFile(ctx context.Context, path string, opts ...client.ApplyOption) error {
	objs, err := ReadObjects(path)
	if err != nil {
		return err
	}
	opts = append([]client.ApplyOption{client.FieldOwner("wasme-test"), client.ForceOwnership}, opts...)
	for _, o := range objs {
		if err := e.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(o), opts...); err != nil {
			return fmt.Errorf("applying %s %s: %w", o.GetKind(), o.GetName(), err)
		}
	}
	return nil
}

// ReadObjects decodes a multi-document YAML file into unstructured objects.
func ReadObjects(path string) ([]*unstructured.Unstructured, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var objs []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return objs, nil
			}
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
}

// waitEstablished waits until every wasme CRD is served.
func (e *Env) waitEstablished(ctx context.Context) error {
	for {
		var crds apiextensionsv1.CustomResourceDefinitionList
		if err := e.Client.List(ctx, &crds); err != nil {
			return err
		}
		pending := 0
		for _, crd := range crds.Items {
			if crd.Spec.Group != wasmev1.GroupVersion.Group {
				continue
			}
			established := false
			for _, c := range crd.Status.Conditions {
				established = established || (c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue)
			}
			if !established {
				pending++
			}
		}
		if pending == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the wasme CRDs to be established: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitPolicy waits until the API server enforces the FilterDeployment admission policy, which
// it loads asynchronously after the policy is created: a dry-run create with a numeric config
// must be refused.
func (e *Env) waitPolicy(ctx context.Context) error {
	probe := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": wasmev1.GroupVersion.String(), "kind": "FilterDeployment",
		"metadata": map[string]any{"name": "policy-probe", "namespace": "default"},
		"spec": map[string]any{
			"deployment": map[string]any{"istio": map[string]any{}},
			"filter":     map[string]any{"image": "probe", "config": int64(1)},
		},
	}}
	for {
		err := e.Client.Create(ctx, probe.DeepCopy(), client.DryRunAll)
		if err != nil && strings.Contains(err.Error(), "spec.filter.config must be") {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the FilterDeployment admission policy (last result: %w): %w", err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WriteKubeconfig writes a kubeconfig for cfg's server, CA and credentials (client
// certificate or bearer token) to path, with namespace as its default namespace ("" for
// none), for child processes and kubectl.
func WriteKubeconfig(cfg *rest.Config, path, namespace string) error {
	if len(cfg.CertData) == 0 && cfg.BearerToken == "" {
		return errors.New("the API server config has no client credentials to write")
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["wasme-test"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["wasme-test"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["wasme-test"] = &clientcmdapi.Context{Cluster: "wasme-test", AuthInfo: "wasme-test", Namespace: namespace}
	kc.CurrentContext = "wasme-test"
	return clientcmd.WriteToFile(*kc, path)
}

// Kubeconfig writes the API server's administrator kubeconfig into a directory of the test
// and returns its path.
func (e *Env) Kubeconfig(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := WriteKubeconfig(e.Config, path, ""); err != nil {
		t.Fatal(err)
	}
	return path
}

// IndexedReader is a cache of the API server, as an operator's manager reads it, with the
// field indexes that index registers; it runs until the test ends.
func (e *Env) IndexedReader(t testing.TB, index func(context.Context, client.FieldIndexer) error) client.Reader {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c, err := cache.New(e.Config, cache.Options{Scheme: e.Scheme})
	if err != nil {
		cancel()
		t.Fatalf("creating a cache: %v", err)
	}
	if err := index(ctx, c); err != nil {
		cancel()
		t.Fatalf("indexing: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("cache: %v", err)
		}
	})
	return c
}
