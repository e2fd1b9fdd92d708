// Package localcluster runs wasme's local control plane, all on 127.0.0.1: a real etcd and
// kube-apiserver (envtest's control plane) with the Istio CRDs and wasme's CRDs, a real istiod
// (pilot-discovery serving plaintext xDS), the CNCF distribution registry over TLS, wasme's install
// objects, and simulated nodes. No kubelet runs: the harness plays kubelet for the pods of
// Deployments and DaemonSets (status Running and Ready, pod IPs on loopback) so istiod sees the
// workloads. The e2e test and `make demo` share it; StartWasme adds the operator and one node
// cache per node.
package localcluster

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"wasme.io/wasme/internal/testing/registry"
	"wasme.io/wasme/internal/testing/testenv"
	"wasme.io/wasme/internal/testing/tools"
	"wasme.io/wasme/internal/wasmhost"
)

// Options configure a Cluster.
type Options struct {
	// Dir holds kubeconfig, logs, registry storage and the nodes' cache directories. Empty
	// means a new temporary directory, removed by Stop.
	Dir string
	// Nodes is how many simulated nodes to create (node-1, node-2, ...); 0 means 1.
	Nodes int
	// Progress receives one line per step and the tool builds' output; nil discards it.
	Progress io.Writer
}

// Cluster is a running local control plane.
type Cluster struct {
	// Env is the API server: admin rest.Config, client and scheme.
	Env *testenv.Env
	// Client is Env.Client.
	Client client.Client
	// Kubeconfig is a kubeconfig file for the API server as an administrator, for kubectl.
	Kubeconfig string
	// Istiod is the running istiod.
	Istiod *Istiod
	// Registry is the running OCI registry.
	Registry *registry.Registry
	// Nodes are the simulated nodes.
	Nodes []*Node
	// Dir is the working directory (see Options.Dir).
	Dir string

	progress io.Writer
	ownDir   bool
	kubelet  *kubelet
	stops    []func()
	stopOnce sync.Once

	cacheOnce sync.Once
	wasmCache *wasmhost.Cache
}

// Node is a simulated node.
type Node struct {
	// Name is the Node object's name.
	Name string
	// CacheDir is the node's /var/local/lib/wasme-cache: its node cache writes there, and the
	// test proxy of a pod on this node reads modules from there.
	CacheDir string
	// CacheAddr is the node cache's HTTP address once StartWasme ran.
	CacheAddr string
}

// Start brings up the API server, istiod, the registry, the nodes and wasme's install
// objects. Stop it when done, also on error paths of the caller.
func Start(ctx context.Context, opts Options) (c *Cluster, err error) {
	c = &Cluster{progress: opts.Progress, Dir: opts.Dir}
	if c.progress == nil {
		c.progress = io.Discard
	}
	if c.Dir == "" {
		if c.Dir, err = os.MkdirTemp("", "wasme-local-"); err != nil {
			return nil, err
		}
		c.ownDir = true
	}
	defer func() {
		if err != nil {
			c.Stop()
			c = nil
		}
	}()
	if err := EnsureTools(c.progress); err != nil {
		return c, err
	}
	version, err := tools.IstioVersion()
	if err != nil {
		return c, err
	}

	c.step("starting etcd and kube-apiserver, installing the Istio CRDs and deploy/crds.yaml")
	if c.Env, err = testenv.Start(); err != nil {
		return c, err
	}
	c.stops = append(c.stops, func() { _ = c.Env.Stop() })
	c.Client = c.Env.Client
	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	if err := testenv.WriteKubeconfig(c.Env.Config, c.Kubeconfig, BookinfoNamespace); err != nil {
		return c, err
	}

	for _, ns := range []string{"istio-system", "wasme"} {
		if err := c.ensureNamespace(ctx, ns, nil); err != nil {
			return c, err
		}
	}
	// The object the operator reads the Istio version from; in a cluster the istiod
	// Deployment's discovery container image tag says what runs.
	if err := c.create(ctx, istiodDeployment(version)); err != nil {
		return c, err
	}

	n := max(opts.Nodes, 1)
	for i := 1; i <= n; i++ {
		node := &Node{Name: fmt.Sprintf("node-%d", i), CacheDir: filepath.Join(c.Dir, "nodes", fmt.Sprintf("node-%d", i), "wasme-cache")}
		if err := os.MkdirAll(node.CacheDir, 0o755); err != nil {
			return c, err
		}
		if err := c.createNode(ctx, node.Name); err != nil {
			return c, err
		}
		c.Nodes = append(c.Nodes, node)
	}
	c.kubelet = startKubelet(ctx, c.Client, c.nodeNames())
	c.stops = append(c.stops, c.kubelet.stop)

	c.step("installing deploy/wasme.yaml (namespace wasme, RBAC, wasme-operator, wasme-cache)")
	if err := c.Env.ApplyFile(ctx, filepath.Join(tools.RepoRoot(), "deploy", "wasme.yaml")); err != nil {
		return c, err
	}

	c.step("starting istiod " + version + " (pilot-discovery, plaintext xDS on 127.0.0.1)")
	if c.Istiod, err = startIstiod(ctx, os.Getenv(tools.IstiodEnv), filepath.Join(c.Dir, "istiod"), c.Kubeconfig, version); err != nil {
		return c, err
	}
	c.stops = append(c.stops, c.Istiod.Stop)

	c.step("starting the distribution registry (HTTPS on 127.0.0.1, own CA)")
	if c.Registry, err = registry.Start(ctx, registry.Options{Dir: filepath.Join(c.Dir, "registry"), TLS: true, Progress: c.progress}); err != nil {
		return c, err
	}
	c.stops = append(c.stops, c.Registry.Stop)
	return c, nil
}

// Stop stops everything Start and StartWasme started, newest first, and removes the
// directory if Start made it.
func (c *Cluster) Stop() {
	c.stopOnce.Do(func() {
		for i := len(c.stops) - 1; i >= 0; i-- {
			c.stops[i]()
		}
		if c.ownDir {
			_ = os.RemoveAll(c.Dir)
		}
	})
}

func (c *Cluster) step(msg string) { fmt.Fprintf(c.progress, "==> %s\n", msg) }

func (c *Cluster) nodeNames() []string {
	var out []string
	for _, n := range c.Nodes {
		out = append(out, n.Name)
	}
	return out
}

// Node returns the simulated node by name, nil if there is none.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

func (c *Cluster) ensureNamespace(ctx context.Context, name string, labels map[string]string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if err := c.Client.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", name, err)
	}
	// Pods need their ServiceAccount; no controller-manager creates "default" here.
	return c.create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: name, Name: "default"}})
}

// create creates o, accepting one that exists.
func (c *Cluster) create(ctx context.Context, o client.Object) error {
	if err := c.Client.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating %T %s/%s: %w", o, o.GetNamespace(), o.GetName(), err)
	}
	return nil
}

func (c *Cluster) createNode(ctx context.Context, name string) error {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
	}}}
	if err := c.create(ctx, node); err != nil {
		return err
	}
	node.Status = corev1.NodeStatus{
		Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			Message: "simulated by wasme's local cluster", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}},
		Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}, {Type: corev1.NodeHostName, Address: name}},
	}
	return c.Client.Status().Update(ctx, node)
}

// istiodDeployment is the istiod Deployment as Istio's installers make it, so the operator
// detects the version of the istiod that runs here from its image tag.
func istiodDeployment(version string) *appsv1.Deployment {
	labels := map[string]string{"app": "istiod", "istio": "pilot"}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "istiod", Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "discovery", Image: "istio/pilot:" + version,
					Args: []string{"discovery"},
				}}},
			},
		},
	}
}
