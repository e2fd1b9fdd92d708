// Package chart checks charts/wasme with the pinned helm: it lints, its default rendering is
// object for object deploy/crds.yaml and deploy/wasme.yaml, each value lands where it should
// (and bad ones are refused with a message), every flag it writes exists in the wasme CLI,
// and what it renders is accepted by a real API server.
package chart

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/cli"
	"wasme.io/wasme/internal/testing/testenv"
	"wasme.io/wasme/internal/testing/tools"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &env)) }

var chartDir = filepath.Join(tools.RepoRoot(), "charts", "wasme")

// helmLabels are the labels only a Helm release carries; deploy/ has wasme's own only.
var helmLabels = []string{"app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "app.kubernetes.io/version", "helm.sh/chart"}

func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	bin, err := tools.Helm(os.Stderr)
	if err != nil {
		t.Fatalf("helm (hack/tools/build.sh helm): %v", err)
	}
	cmd := exec.Command(bin, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	// No user's helm configuration or repositories take part.
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CONFIG_HOME="+home, "HELM_CACHE_HOME="+home, "HELM_DATA_HOME="+home)
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("helm %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errOut.String()))
	}
	return out.String(), nil
}

// render runs helm template for release "wasme" in namespace ns with extra arguments.
func render(t *testing.T, ns string, extra ...string) ([]*unstructured.Unstructured, error) {
	t.Helper()
	args := append([]string{"template", "wasme", chartDir, "--namespace", ns, "--kube-version", "1.34.0"}, extra...)
	out, err := helm(t, args...)
	if err != nil {
		return nil, err
	}
	f := filepath.Join(t.TempDir(), "rendered.yaml")
	if err := os.WriteFile(f, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	return testenv.ReadObjects(f)
}

func key(o *unstructured.Unstructured) string {
	return fmt.Sprintf("%s %s %s/%s", o.GetAPIVersion(), o.GetKind(), o.GetNamespace(), o.GetName())
}

func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

func TestLint(t *testing.T) {
	if out, err := helm(t, "lint", "--strict", chartDir, "--kube-version", "1.34.0"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// With default values the chart is the install files: the same objects, field for field,
// but for Helm's own labels.
func TestDefaultsRenderTheInstallFiles(t *testing.T) {
	got, err := render(t, "wasme", "--include-crds")
	if err != nil {
		t.Fatal(err)
	}
	var want []*unstructured.Unstructured
	for _, f := range []string{"crds.yaml", "wasme.yaml"} {
		objs, err := testenv.ReadObjects(filepath.Join(tools.RepoRoot(), "deploy", f))
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, objs...)
	}
	byKey := map[string]*unstructured.Unstructured{}
	for _, o := range got {
		labels := o.GetLabels()
		for _, l := range helmLabels {
			if _, ok := labels[l]; !ok && o.GetKind() != "CustomResourceDefinition" {
				t.Errorf("%s: no %s label", key(o), l)
			}
			delete(labels, l)
		}
		o.SetLabels(labels)
		if _, dup := byKey[key(o)]; dup {
			t.Errorf("the chart renders %s twice", key(o))
		}
		byKey[key(o)] = o
	}
	for _, w := range want {
		g, ok := byKey[key(w)]
		if !ok {
			t.Errorf("deploy/ has %s, the chart does not", key(w))
			continue
		}
		delete(byKey, key(w))
		if !reflect.DeepEqual(g.Object, w.Object) {
			gj, _ := json.MarshalIndent(g.Object, "", " ")
			wj, _ := json.MarshalIndent(w.Object, "", " ")
			t.Errorf("%s differs from deploy/:\nchart:  %s\ndeploy: %s", key(w), gj, wj)
		}
	}
	for k := range byKey {
		t.Errorf("the chart renders %s, deploy/ does not", k)
	}
}

func containerArgs(t *testing.T, objs []*unstructured.Unstructured, kind, name string) []string {
	t.Helper()
	o := find(objs, kind, name)
	if o == nil {
		t.Fatalf("no %s %s rendered", kind, name)
	}
	cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
	if len(cs) != 1 {
		t.Fatalf("%s %s: %d containers", kind, name, len(cs))
	}
	args, _, _ := unstructured.NestedStringSlice(cs[0].(map[string]any), "args")
	return args
}

func podField(t *testing.T, objs []*unstructured.Unstructured, kind, name string, path ...string) any {
	t.Helper()
	o := find(objs, kind, name)
	if o == nil {
		t.Fatalf("no %s %s rendered", kind, name)
	}
	v, _, _ := unstructured.NestedFieldNoCopy(o.Object, append([]string{"spec", "template", "spec"}, path...)...)
	return v
}

func TestValues(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ns      string
		args    []string
		wantErr string
		check   func(t *testing.T, objs []*unstructured.Unstructured)
	}{
		{name: "image", args: []string{"--set", "image.repository=registry.example.com/wasme,image.tag=v9,image.pullPolicy=Always"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				for _, w := range [][2]string{{"Deployment", "wasme-operator"}, {"DaemonSet", "wasme-cache"}} {
					c := podField(t, objs, w[0], w[1], "containers").([]any)[0].(map[string]any)
					if c["image"] != "registry.example.com/wasme:v9" || c["imagePullPolicy"] != "Always" {
						t.Errorf("%s: image %v, pull policy %v", w[1], c["image"], c["imagePullPolicy"])
					}
				}
			}},
		{name: "image digest", args: []string{"--set", "image.repository=registry.example.com/wasme,image.digest=sha256:" + strings.Repeat("ab", 32)},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				want := "registry.example.com/wasme@sha256:" + strings.Repeat("ab", 32)
				for _, w := range [][2]string{{"Deployment", "wasme-operator"}, {"DaemonSet", "wasme-cache"}} {
					for _, f := range []string{"containers", "initContainers"} {
						cs, _ := podField(t, objs, w[0], w[1], f).([]any)
						for _, c := range cs {
							if img := c.(map[string]any)["image"]; img != want {
								t.Errorf("%s %s: image %v, want %s", w[1], f, img, want)
							}
						}
					}
				}
			}},
		{name: "no cluster DNS", args: []string{"--set", "operator.service.clusterIP=10.96.0.100",
			"--set-json", `cache.hostAliases=[{"ip":"10.96.0.100","hostnames":["wasme-operator.wasme.svc"]}]`},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				ip, _, _ := unstructured.NestedString(find(objs, "Service", "wasme-operator").Object, "spec", "clusterIP")
				if ip != "10.96.0.100" {
					t.Errorf("operator Service clusterIP %q", ip)
				}
				want := []any{map[string]any{"ip": "10.96.0.100", "hostnames": []any{"wasme-operator.wasme.svc"}}}
				if v := podField(t, objs, "DaemonSet", "wasme-cache", "hostAliases"); !reflect.DeepEqual(v, want) {
					t.Errorf("cache hostAliases %v", v)
				}
			}},
		{name: "replicas with leader election", args: []string{"--set", "operator.replicas=3"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				n, _, _ := unstructured.NestedFieldNoCopy(find(objs, "Deployment", "wasme-operator").Object, "spec", "replicas")
				if fmt.Sprint(n) != "3" || !slices.Contains(containerArgs(t, objs, "Deployment", "wasme-operator"), "--leader-elect") {
					t.Errorf("replicas %v, args %v", n, containerArgs(t, objs, "Deployment", "wasme-operator"))
				}
			}},
		{name: "replicas without leader election", args: []string{"--set", "operator.replicas=2,operator.leaderElection=false"},
			wantErr: "operator.replicas > 1 needs operator.leaderElection"},
		{name: "one replica without leader election", args: []string{"--set", "operator.leaderElection=false"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				if slices.Contains(containerArgs(t, objs, "Deployment", "wasme-operator"), "--leader-elect") {
					t.Error("--leader-elect still passed")
				}
			}},
		{name: "scheduling", args: []string{"--set", "cache.nodeSelector.role=edge,operator.priorityClassName=system-cluster-critical,cache.priorityClassName=system-node-critical",
			"--set-json", `operator.tolerations=[{"key":"dedicated","operator":"Equal","value":"infra","effect":"NoSchedule"}]`},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				if v := podField(t, objs, "DaemonSet", "wasme-cache", "nodeSelector"); !reflect.DeepEqual(v, map[string]any{"role": "edge"}) {
					t.Errorf("cache nodeSelector %v", v)
				}
				if v := podField(t, objs, "Deployment", "wasme-operator", "priorityClassName"); v != "system-cluster-critical" {
					t.Errorf("operator priorityClassName %v", v)
				}
				if v := podField(t, objs, "DaemonSet", "wasme-cache", "priorityClassName"); v != "system-node-critical" {
					t.Errorf("cache priorityClassName %v", v)
				}
				tol := podField(t, objs, "Deployment", "wasme-operator", "tolerations").([]any)
				if len(tol) != 1 || tol[0].(map[string]any)["key"] != "dedicated" {
					t.Errorf("operator tolerations %v", tol)
				}
			}},
		{name: "resources", args: []string{"--set", "operator.resources.limits.memory=1Gi,cache.resources.requests.cpu=10m"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				c := podField(t, objs, "Deployment", "wasme-operator", "containers").([]any)[0].(map[string]any)
				if m, _, _ := unstructured.NestedString(c, "resources", "limits", "memory"); m != "1Gi" {
					t.Errorf("operator memory limit %q", m)
				}
				c = podField(t, objs, "DaemonSet", "wasme-cache", "containers").([]any)[0].(map[string]any)
				if m, _, _ := unstructured.NestedString(c, "resources", "requests", "cpu"); m != "10m" {
					t.Errorf("cache cpu request %q", m)
				}
			}},
		{name: "sizes, durations and logs", args: []string{"--set", "cache.maxSize=2Gi,operator.maxModuleSize=64Mi,operator.resolveInterval=90s,logLevel=debug,logFormat=text"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				op, ca := containerArgs(t, objs, "Deployment", "wasme-operator"), containerArgs(t, objs, "DaemonSet", "wasme-cache")
				for _, want := range []string{"--max-module-size=64Mi", "--resolve-interval=90s", "--log-level=debug", "--log-format=text"} {
					if !slices.Contains(op, want) {
						t.Errorf("operator args %v lack %s", op, want)
					}
				}
				for _, want := range []string{"--max-size=2Gi", "--log-level=debug", "--log-format=text"} {
					if !slices.Contains(ca, want) {
						t.Errorf("cache args %v lack %s", ca, want)
					}
				}
			}},
		{name: "the module server's Secret", args: []string{"--set", "operator.moduleTLSSecret=module-tls-from-cert-manager"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				if op := containerArgs(t, objs, "Deployment", "wasme-operator"); !slices.Contains(op, "--module-tls-secret=module-tls-from-cert-manager") {
					t.Errorf("operator args %v", op)
				}
			}},
		{name: "bad log level", args: []string{"--set", "logLevel=loud"}, wantErr: `logLevel "loud": want debug, info, warn or error`},
		{name: "cache directory", args: []string{"--set", "cache.directory=/srv/wasme/modules"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				const dir = "/srv/wasme/modules"
				if op := containerArgs(t, objs, "Deployment", "wasme-operator"); !slices.Contains(op, "--cache-directory="+dir) {
					t.Errorf("operator args %v lack --cache-directory=%s", op, dir)
				}
				if ca := containerArgs(t, objs, "DaemonSet", "wasme-cache"); !slices.Contains(ca, "--directory="+dir) {
					t.Errorf("cache args %v lack --directory=%s", ca, dir)
				}
				vols, _ := podField(t, objs, "DaemonSet", "wasme-cache", "volumes").([]any)
				var hostPaths []string
				for _, v := range vols {
					if p, ok, _ := unstructured.NestedString(v.(map[string]any), "hostPath", "path"); ok {
						hostPaths = append(hostPaths, p)
					}
				}
				if !slices.Equal(hostPaths, []string{dir}) {
					t.Errorf("DaemonSet hostPaths %v, want [%s]", hostPaths, dir)
				}
				c := podField(t, objs, "DaemonSet", "wasme-cache", "containers").([]any)[0].(map[string]any)
				mounts, _, _ := unstructured.NestedSlice(c, "volumeMounts")
				if m := mounts[0].(map[string]any); m["name"] != "cache-dir" || m["mountPath"] != dir {
					t.Errorf("cache mount %v, want cache-dir at %s", m, dir)
				}
				for _, o := range objs {
					if b, _ := json.Marshal(o.Object); bytes.Contains(b, []byte(wasmev1.CacheDir)) {
						t.Errorf("%s still names the default directory %s", key(o), wasmev1.CacheDir)
					}
				}
			}},
		{name: "default cache directory: the operator's own default", check: func(t *testing.T, objs []*unstructured.Unstructured) {
			for _, a := range containerArgs(t, objs, "Deployment", "wasme-operator") {
				if strings.HasPrefix(a, "--cache-directory") {
					t.Errorf("operator args carry %s for the default", a)
				}
			}
		}},
		{name: "relative cache directory", args: []string{"--set", "cache.directory=data"}, wantErr: `cache.directory "data": want an absolute, clean path`},
		{name: "unclean cache directory", args: []string{"--set", "cache.directory=/srv/../data/"}, wantErr: `cache.directory "/srv/../data/": want an absolute`},
		{name: "another namespace", ns: "platform",
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				if !slices.Contains(containerArgs(t, objs, "DaemonSet", "wasme-cache"), "--operator-url=https://wasme-operator.platform.svc:9980") {
					t.Errorf("cache args %v", containerArgs(t, objs, "DaemonSet", "wasme-cache"))
				}
				if !slices.Contains(containerArgs(t, objs, "Deployment", "wasme-operator"), "--cache-user=system:serviceaccount:platform:wasme-cache") {
					t.Errorf("operator args %v", containerArgs(t, objs, "Deployment", "wasme-operator"))
				}
				for _, o := range objs {
					if ns := o.GetNamespace(); ns != "" && ns != "platform" {
						t.Errorf("%s in namespace %s", key(o), ns)
					}
				}
			}},
		{name: "existing namespace", args: []string{"--set", "namespace.create=false"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				if find(objs, "Namespace", "wasme") != nil {
					t.Error("Namespace rendered")
				}
			}},
		{name: "no ServiceMonitor without its CRD",
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				if o := find(objs, "ServiceMonitor", "wasme-operator"); o != nil {
					t.Error("ServiceMonitor rendered though the cluster has no monitoring.coreos.com/v1")
				}
			}},
		{name: "ServiceMonitor when its CRD exists", args: []string{"--api-versions", "monitoring.coreos.com/v1/ServiceMonitor", "--set", "metrics.serviceMonitor.labels.release=prom"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				for _, c := range []string{"wasme-operator", "wasme-cache"} {
					sm := find(objs, "ServiceMonitor", c)
					svc := find(objs, "Service", c+"-metrics")
					if sm == nil || svc == nil {
						t.Fatalf("%s: ServiceMonitor %v, metrics Service %v", c, sm != nil, svc != nil)
					}
					if sm.GetLabels()["release"] != "prom" {
						t.Errorf("%s ServiceMonitor labels %v", c, sm.GetLabels())
					}
					sel, _, _ := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels")
					for k, v := range sel {
						if svc.GetLabels()[k] != v {
							t.Errorf("%s ServiceMonitor selects %s=%s, the Service has %v", c, k, v, svc.GetLabels())
						}
					}
				}
			}},
		{name: "metrics off", args: []string{"--set", "metrics.enabled=false", "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				o := find(objs, "Deployment", "wasme-operator")
				if a, _, _ := unstructured.NestedStringMap(o.Object, "spec", "template", "metadata", "annotations"); len(a) != 0 {
					t.Errorf("annotations %v", a)
				}
				if find(objs, "ServiceMonitor", "wasme-operator") != nil {
					t.Error("ServiceMonitor rendered with metrics off")
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := tc.ns
			if ns == "" {
				ns = "wasme"
			}
			objs, err := render(t, ns, tc.args...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, objs)
		})
	}
}

// Every flag the chart can write is one the wasme binary takes: the chart's args, with every
// optional flag on, parse as a command line of the CLI (--help stops before running).
func TestArgsAreWasmeFlags(t *testing.T) {
	objs, err := render(t, "platform", "--set", "cache.maxSize=2Gi,cache.directory=/srv/wasme,operator.maxModuleSize=64Mi,operator.resolveInterval=90s,logLevel=debug,logFormat=text")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range [][2]string{{"Deployment", "wasme-operator"}, {"DaemonSet", "wasme-cache"}} {
		args := containerArgs(t, objs, w[0], w[1])
		var out bytes.Buffer
		if err := cli.Run(context.Background(), append(args, "--help"), &out, &out); err != nil {
			t.Errorf("%s: wasme %s: %v", w[1], strings.Join(args, " "), err)
		}
	}
}

// What the chart renders (CRDs included, in a namespace other than wasme) is accepted by a
// real API server, server-side applied as helm install would create it.
func TestRenderedChartApplies(t *testing.T) {
	objs, err := render(t, "wasme-chart", "--include-crds", "--set", "operator.replicas=2,cache.maxSize=1Gi")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, o := range objs {
		if err := env.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(o), client.FieldOwner("helm"), client.ForceOwnership); err != nil {
			t.Errorf("applying %s: %v", key(o), err)
		}
	}
}
