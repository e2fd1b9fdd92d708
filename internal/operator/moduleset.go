package operator

import (
	"context"
	"fmt"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	wasmev1 "wasme.io/wasme/api/v1"
	wasmeac "wasme.io/wasme/api/v1/applyconfiguration/api/v1"
)

// ModuleSetReconciler keeps ModuleSet/cluster equal to the union of the module digests that
// FilterDeployment statuses name. Node caches watch that one object instead of every
// FilterDeployment, so the many status writes of a rollout (workload counts, conditions, node
// progress) reach no node; only a change of the needed digests does, once.
type ModuleSetReconciler struct {
	Client client.Client
}

var moduleSetKey = reconcile.Request{NamespacedName: types.NamespacedName{Name: wasmev1.ModuleSetName}}

// SetupWithManager registers the reconciler: every FilterDeployment event whose digests may
// have changed, and any change to the ModuleSet itself, asks for the one key.
func (r *ModuleSetReconciler) SetupWithManager(mgr manager.Manager) error {
	toSet := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{moduleSetKey}
	})
	return ctrl.ControllerManagedBy(mgr).
		Named("moduleset").
		For(&wasmev1.ModuleSet{}).
		Watches(&wasmev1.FilterDeployment{}, toSet, ctrl.WithPredicates(digestsChanged{})).
		// Once at start: a cluster without FilterDeployments gets its (empty) ModuleSet too,
		// which tells the node caches that nothing is needed.
		WatchesRawSource(source.Func(func(_ context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
			q.Add(moduleSetKey)
			return nil
		})).
		Complete(r)
}

// Reconcile writes the ModuleSet when the needed digests differ from what it lists.
func (r *ModuleSetReconciler) Reconcile(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
	var fds wasmev1.FilterDeploymentList
	if err := r.Client.List(ctx, &fds); err != nil {
		return reconcile.Result{}, fmt.Errorf("listing FilterDeployments: %w", err)
	}
	want := wasmev1.NeededDigests(fds.Items)
	var cur wasmev1.ModuleSet
	err := r.Client.Get(ctx, moduleSetKey.NamespacedName, &cur)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return reconcile.Result{}, fmt.Errorf("reading the ModuleSet: %w", err)
	case slices.Equal(cur.Spec.Digests, want):
		return reconcile.Result{}, nil
	}
	set := wasmeac.ModuleSet(wasmev1.ModuleSetName).WithSpec(wasmeac.ModuleSetSpec().WithDigests(want...))
	if err := r.Client.Apply(ctx, set, client.FieldOwner(wasmev1.OperatorFieldManager), client.ForceOwnership); err != nil {
		return reconcile.Result{}, fmt.Errorf("writing the ModuleSet: %w", err)
	}
	return reconcile.Result{}, nil
}

// digestsChanged passes FilterDeployment events that can change NeededDigests.
type digestsChanged struct{ predicate.Funcs }

func (digestsChanged) Update(e event.UpdateEvent) bool {
	o, ok1 := e.ObjectOld.(*wasmev1.FilterDeployment)
	n, ok2 := e.ObjectNew.(*wasmev1.FilterDeployment)
	return !ok1 || !ok2 || o.Status.ModuleDigest != n.Status.ModuleDigest || o.Status.DeployedModuleDigest != n.Status.DeployedModuleDigest
}
