package operator_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/operator"
	"wasme.io/wasme/pkg/wasmimage"
)

// A node cache directory other than the default (the operator's --cache-directory, the chart's
// cache.directory) is what the sidecars mount and the EnvoyFilter loads the module from; an
// operator restarted with the default moves both back, and removal still restores the workload.
func TestCacheDirectoryFlowsToWorkloadsAndEnvoyFilters(t *testing.T) {
	cl := setupWith(t, setupOptions{istiod: currentIstiod, noOperator: true})
	loopback, err := wasmimage.NewEgressPolicy([]string{"127.0.0.1:*"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	options := func(dir string) operator.Options {
		return operator.Options{
			ResolveInterval: time.Hour, AllowInsecureRegistries: true, CacheDir: dir,
			Images: operator.RegistryImages{Options: registryOptions(cl.reg), Egress: loopback},
		}
	}
	ref := cl.push("filters/custom-header:v1", customHeader(t))
	ns := env.Namespace(t)
	cl.apply(deployment(ns, "app", map[string]string{"app": "app"}, nil))

	stop := cl.startOperatorWith(cl.ctx, options("/srv/wasme/modules"))
	fd := newFD(ns, "f", ref)
	cl.apply(fd)
	fd = cl.waitReady(fd)
	hex := strings.TrimPrefix(fd.Status.ModuleDigest, "sha256:")
	a := cl.deployment(ns, "app").Spec.Template.Annotations
	if got, want := a[operator.UserVolumeAnnotation], `[{"name":"cache-dir","hostPath":{"path":"/srv/wasme/modules"}}]`; got != want {
		t.Errorf("userVolume = %s, want %s", got, want)
	}
	if got, want := a[operator.UserVolumeMountAnnotation], `[{"mountPath":"/srv/wasme/modules","name":"cache-dir","readOnly":true}]`; got != want {
		t.Errorf("userVolumeMount = %s, want %s", got, want)
	}
	ef := cl.envoyFilters(ns)["app-f."+ns]
	if ef == nil {
		t.Fatalf("no EnvoyFilter: %v", keys(cl.envoyFilters(ns)))
	}
	if spec := specJSON(t, ef); !strings.Contains(spec, `"/srv/wasme/modules/`+hex+`"`) || strings.Contains(spec, wasmev1.CacheDir) {
		t.Errorf("EnvoyFilter does not load from /srv/wasme/modules: %s", spec)
	}
	stop()

	t.Cleanup(cl.startOperatorWith(cl.ctx, options("")))
	t.Cleanup(cl.deleteFilterDeployments)
	cl.eventually("the default directory", func() (bool, string) {
		a := cl.deployment(ns, "app").Spec.Template.Annotations
		ef := cl.envoyFilters(ns)["app-f."+ns]
		if ef == nil {
			return false, "no EnvoyFilter"
		}
		spec := specJSON(t, ef)
		return a[operator.UserVolumeAnnotation] == operator.UserVolume && a[operator.UserVolumeMountAnnotation] == operator.UserVolumeMount &&
			strings.Contains(spec, `"`+wasmev1.CacheDir+"/"+hex+`"`), fmt.Sprintf("annotations %v, EnvoyFilter %s", a, spec)
	})
	cl.waitGone(fd)
	if a := cl.deployment(ns, "app").Spec.Template.Annotations; len(a) != 0 {
		t.Errorf("annotations after removal: %v", a)
	}
}
