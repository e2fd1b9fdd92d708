package nodecache

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/go-logr/logr/testr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	wasmev1 "wasme.io/wasme/api/v1"
	operatorpkg "wasme.io/wasme/internal/operator"
)

// startModuleSetController runs the operator's ModuleSet controller until the test ends, so
// that the FilterDeployment statuses a test writes reach the daemons as they do in a cluster:
// through ModuleSet/cluster. Tests running at once each run one; they write the same object
// with the same field manager and the same content (the union over every FilterDeployment).
func startModuleSetController(t *testing.T) {
	t.Helper()
	skip := true
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme:     env.Scheme,
		Logger:     testr.New(t).WithName("moduleset"),
		Metrics:    metricsserver.Options{BindAddress: "0"},
		Controller: config.Controller{SkipNameValidation: &skip},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := (&operatorpkg.ModuleSetReconciler{Client: mgr.GetClient()}).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ModuleSet controller: %v", err)
		}
	})
	// An earlier test's controller may have stopped before it saw that test's FilterDeployments
	// go; start from a ModuleSet that lists what exists now, so no daemon chases their modules.
	waitFor(t, "the ModuleSet to list the current FilterDeployments' modules", func() (bool, string) {
		var fds wasmev1.FilterDeploymentList
		if err := env.Client.List(context.Background(), &fds); err != nil {
			return false, err.Error()
		}
		var set wasmev1.ModuleSet
		if err := env.Client.Get(context.Background(), client.ObjectKey{Name: wasmev1.ModuleSetName}, &set); err != nil {
			return false, err.Error()
		}
		want := wasmev1.NeededDigests(fds.Items)
		return slices.Equal(set.Spec.Digests, want), fmt.Sprintf("digests %v, want %v", set.Spec.Digests, want)
	})
}

// TestNoModuleSetKeepsTheDirectory: until the operator has written the ModuleSet (a new
// cluster, or the object deleted and not yet restored) nothing counts as unneeded, so a
// daemon started then keeps every verified file; once a ModuleSet exists, a file it does not
// list is collected.
func TestNoModuleSetKeepsTheDirectory(t *testing.T) {
	ctx := context.Background()
	// No ModuleSet controller runs in this test: delete what earlier tests left.
	set := &wasmev1.ModuleSet{ObjectMeta: metav1.ObjectMeta{Name: wasmev1.ModuleSetName}}
	if err := env.Client.Delete(ctx, set); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	dir := t.TempDir()
	mod := wasmModule("kept-without-moduleset")
	h := hexOf(mod)
	if err := os.WriteFile(filepath.Join(dir, h), mod, 0o644); err != nil {
		t.Fatal(err)
	}
	createNode(t, "no-moduleset")
	// A source nobody listens on: nothing needs fetching here.
	op := &operator{url: "https://127.0.0.1:1", tokenFile: filepath.Join(t.TempDir(), "token"), caFile: filepath.Join(t.TempDir(), "ca.crt")}
	writeToken(t, op.tokenFile, "unused")
	writeToken(t, op.caFile, string(servingTLS(t).CAPEM))
	startNode(t, op, "no-moduleset", dir, func(o *Options) { o.GracePeriod = -1 }, nil)
	// Reported Ready by the first sync, the one that collects unneeded files at once (grace -1).
	waitModule(t, "no-moduleset", h, wasmev1.ModuleReady)
	if _, err := os.Stat(filepath.Join(dir, h)); err != nil {
		t.Fatalf("the module was removed without a ModuleSet: %v", err)
	}

	set.Spec.Digests = nil
	if err := env.Client.Create(ctx, set); err != nil {
		t.Fatal(err)
	}
	waitGone(t, "no-moduleset", h)
	if _, err := os.Stat(filepath.Join(dir, h)); !os.IsNotExist(err) {
		t.Fatalf("the unlisted module is still on disk: %v", err)
	}
}
