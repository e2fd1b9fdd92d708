package operator_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/testing/wasmbuild"
)

// TestModuleSetFollowsFilterDeployments: ModuleSet/cluster lists exactly the digests that
// FilterDeployment statuses name, is restored when someone else changes it, drops a digest
// when its last FilterDeployment goes, and the node caches' ServiceAccount may read but not
// write it.
func TestModuleSetFollowsFilterDeployments(t *testing.T) {
	cl := setup(t, "")
	ns := "moduleset"
	cl.ensureNamespace(ns)
	cl.apply(deployment(ns, "app", map[string]string{"app": "app"}, nil))
	digestOf := func(b []byte) string { s := sha256.Sum256(b); return "sha256:" + hex.EncodeToString(s[:]) }
	var digests []string
	for i, name := range []string{"first", "second"} {
		mod := wasmbuild.WithCustomSection(customHeader(t), "moduleset-test", []byte(name))
		digests = append(digests, digestOf(mod))
		ref := cl.push(fmt.Sprintf("moduleset/%s:v1", name), mod)
		fd := &wasmev1.FilterDeployment{}
		fd.Namespace, fd.Name = ns, name
		fd.Spec.Filter.Image = ref
		cl.apply(fd)
		want := slices.Clone(digests[:i+1])
		slices.Sort(want)
		cl.eventually("the ModuleSet to list "+name+"'s module", func() (bool, string) {
			got := moduleSet(cl)
			return slices.Equal(got, want), fmt.Sprintf("digests %v, want %v", got, want)
		})
	}

	// Someone else empties it: the operator writes it back.
	var set wasmev1.ModuleSet
	if err := cl.c.Get(cl.ctx, client.ObjectKey{Name: wasmev1.ModuleSetName}, &set); err != nil {
		t.Fatal(err)
	}
	set.Spec.Digests = nil
	if err := cl.c.Update(cl.ctx, &set); err != nil {
		t.Fatal(err)
	}
	cl.eventually("the ModuleSet to be restored", func() (bool, string) {
		got := moduleSet(cl)
		return len(got) == 2, fmt.Sprintf("digests %v", got)
	})

	// The node caches only read it.
	cacheCfg, _, err := env.ServiceAccountConfig(cl.ctx, "wasme", "wasme-cache")
	if err != nil {
		t.Fatal(err)
	}
	cacheClient, err := client.New(cacheCfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	var asCache wasmev1.ModuleSet
	if err := cacheClient.Get(cl.ctx, client.ObjectKey{Name: wasmev1.ModuleSetName}, &asCache); err != nil {
		t.Fatalf("the node cache reading the ModuleSet: %v", err)
	}
	asCache.Spec.Digests = append(asCache.Spec.Digests, "sha256:"+fmt.Sprintf("%064x", 1))
	if err := cacheClient.Update(cl.ctx, &asCache); !apierrors.IsForbidden(err) {
		t.Fatalf("the node cache writing the ModuleSet: err = %v, want Forbidden", err)
	}

	// The first FilterDeployment goes: only the second's module stays listed.
	if err := cl.c.Delete(context.Background(), cl.fd(ns, "first")); err != nil {
		t.Fatal(err)
	}
	cl.eventually("the first module to leave the ModuleSet", func() (bool, string) {
		got := moduleSet(cl)
		return slices.Equal(got, digests[1:]), fmt.Sprintf("digests %v, want %v", got, digests[1:])
	})
	// And the last: an empty list, which node caches read as "nothing is needed".
	if err := cl.c.Delete(context.Background(), cl.fd(ns, "second")); err != nil {
		t.Fatal(err)
	}
	cl.eventually("the ModuleSet to be empty", func() (bool, string) {
		got := moduleSet(cl)
		return len(got) == 0, fmt.Sprintf("digests %v", got)
	})
}

func moduleSet(cl *cluster) []string {
	var set wasmev1.ModuleSet
	if err := cl.c.Get(cl.ctx, client.ObjectKey{Name: wasmev1.ModuleSetName}, &set); err != nil {
		return []string{"error: " + err.Error()}
	}
	return set.Spec.Digests
}
