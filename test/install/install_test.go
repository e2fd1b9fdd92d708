// Package install checks the two install files a user applies, deploy/crds.yaml and
// deploy/wasme.yaml, against a real API server.
package install

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"wasme.io/wasme/internal/testing/testenv"
	"wasme.io/wasme/internal/testing/tools"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &env)) }

func deployFile(name string) string { return filepath.Join(tools.RepoRoot(), "deploy", name) }

// Both files apply as `kubectl apply --server-side -f` would, and applying them again, dry run or
// for real, changes nothing. (A dry run of wasme.yaml alone cannot come first: its namespace does
// not exist until the file is applied, as with kubectl.)
func TestInstallFilesApplyAndRoundTrip(t *testing.T) {
	ctx := context.Background()
	for _, f := range []string{"crds.yaml", "wasme.yaml"} {
		t.Run(f, func(t *testing.T) {
			if err := env.ApplyFile(ctx, deployFile(f)); err != nil {
				t.Fatalf("apply: %v", err)
			}
			objs, err := testenv.ReadObjects(deployFile(f))
			if err != nil {
				t.Fatal(err)
			}
			before := resourceVersions(ctx, t, objs)
			if err := env.ApplyFile(ctx, deployFile(f), client.DryRunAll); err != nil {
				t.Fatalf("dry run: %v", err)
			}
			if err := env.ApplyFile(ctx, deployFile(f)); err != nil {
				t.Fatalf("second apply: %v", err)
			}
			after := resourceVersions(ctx, t, objs)
			for k, v := range before {
				if after[k] != v {
					t.Errorf("%s changed on a second apply (resourceVersion %s -> %s)", k, v, after[k])
				}
			}
		})
	}
}

func resourceVersions(ctx context.Context, t *testing.T, objs []*unstructured.Unstructured) map[string]string {
	t.Helper()
	rv := map[string]string{}
	for _, o := range objs {
		got := &unstructured.Unstructured{}
		got.SetGroupVersionKind(o.GroupVersionKind())
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(o), got); err != nil {
			t.Fatalf("get %s %s: %v", o.GetKind(), o.GetName(), err)
		}
		rv[o.GetKind()+"/"+o.GetNamespace()+"/"+o.GetName()] = got.GetResourceVersion()
	}
	return rv
}

// The workloads are hardened as the issue asks: the cache mounts the node directory, knows its
// node, and neither component can write its root filesystem or keep a capability.
func TestInstallWorkloadsAreHardened(t *testing.T) {
	ctx := context.Background()
	if err := env.ApplyFile(ctx, deployFile("wasme.yaml")); err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: "wasme", Name: "wasme-cache"}, &ds); err != nil {
		t.Fatal(err)
	}
	var dep appsv1.Deployment
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: "wasme", Name: "wasme-operator"}, &dep); err != nil {
		t.Fatal(err)
	}

	hostPath := ""
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.HostPath != nil {
			hostPath = v.HostPath.Path
		}
	}
	if hostPath != "/var/local/lib/wasme-cache" {
		t.Errorf("cache hostPath = %q", hostPath)
	}
	nodeName := false
	for _, e := range ds.Spec.Template.Spec.Containers[0].Env {
		nodeName = nodeName || (e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName")
	}
	if !nodeName {
		t.Error("cache has no NODE_NAME from the downward API")
	}
	leaderElect := false
	for _, a := range dep.Spec.Template.Spec.Containers[0].Args {
		leaderElect = leaderElect || a == "--leader-elect"
	}
	if !leaderElect {
		t.Error("operator runs without leader election")
	}

	for name, spec := range map[string]corev1.PodSpec{"cache": ds.Spec.Template.Spec, "operator": dep.Spec.Template.Spec} {
		c := spec.Containers[0]
		sc := c.SecurityContext
		switch {
		case sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
			t.Errorf("%s: root filesystem is writable", name)
		case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
			t.Errorf("%s: privilege escalation allowed", name)
		case sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL":
			t.Errorf("%s: capabilities not dropped", name)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("%s: missing resource requests or limits", name)
		}
		if c.LivenessProbe == nil || c.ReadinessProbe == nil {
			t.Errorf("%s: missing probes", name)
		}
		if spec.ServiceAccountName != "wasme-"+name {
			t.Errorf("%s: service account %q", name, spec.ServiceAccountName)
		}
	}
}
