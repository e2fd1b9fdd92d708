package operator

import (
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/istio"
)

var envoyFilterKind = schema.GroupKind{Group: "networking.istio.io", Kind: "EnvoyFilter"}

// istioState is what the workload step needs to know of Istio.
type istioState struct {
	shape istio.Shape
}

// reconcileIstio checks that Istio's EnvoyFilter API is served and tells the Istio version:
// the spec's override, else the istiod Deployments' in spec.deployment.istio.istioNamespace.
func (r *FilterDeploymentReconciler) reconcileIstio(ctx context.Context, fd *wasmev1.FilterDeployment, p *pass) error {
	if _, err := r.RESTMapper().RESTMapping(envoyFilterKind); err != nil {
		if apimeta.IsNoMatchError(err) {
			p.stop(wasmev1.IstioNotFoundReason, fmt.Errorf("the EnvoyFilter API (networking.istio.io) is not installed: install Istio"))
			p.requeueAfter = 10 * time.Second
			return nil
		}
		return fmt.Errorf("looking up the EnvoyFilter API: %w", err)
	}
	if err := r.ensureEnvoyFilterWatch(); err != nil {
		return err
	}
	spec := fd.Spec.Deployment.Istio
	if spec.IstioVersion != "" {
		v, err := istio.ParseVersion(spec.IstioVersion)
		if err != nil {
			p.stalled = true
			p.stop(wasmev1.InvalidSpecReason, fmt.Errorf("spec.deployment.istio.istioVersion: %w", err))
			return nil
		}
		fd.Status.IstioVersion = v.String()
		return nil
	}
	ns := spec.IstioNamespace
	if ns == "" {
		ns = "istio-system"
	}
	var deps appsv1.DeploymentList
	if err := r.List(ctx, &deps, client.InNamespace(ns)); err != nil {
		return fmt.Errorf("listing Deployments in %s: %w", ns, err)
	}
	v, known, err := istio.DetectVersion(deps.Items)
	if err != nil {
		// istiod Deployments are watched: its arrival brings the next pass.
		p.stop(wasmev1.IstioNotFoundReason, fmt.Errorf("no istiod Deployment in namespace %s: install Istio, or set spec.deployment.istio.istioNamespace or istioVersion", ns))
		return nil
	}
	fd.Status.IstioVersion = v.String()
	if !known {
		fd.Status.IstioVersion += " (assumed)"
	}
	return nil
}

// shape is the EnvoyFilter form for the version reconcileIstio put in the status.
func shape(fd *wasmev1.FilterDeployment) istio.Shape {
	v, err := istio.ParseVersion(fd.Status.IstioVersion)
	if err != nil {
		return istio.ShapeFor(istio.Current)
	}
	return istio.ShapeFor(v)
}

// ensureEnvoyFilterWatch starts the EnvoyFilter watch the first time the API is there.
func (r *FilterDeploymentReconciler) ensureEnvoyFilterWatch() error {
	r.watchMu.Lock()
	defer r.watchMu.Unlock()
	if r.envoyFiltersWatched || r.watchEnvoyFilters == nil {
		return nil
	}
	if err := r.watchEnvoyFilters(); err != nil {
		return fmt.Errorf("watching EnvoyFilters: %w", err)
	}
	r.envoyFiltersWatched = true
	return nil
}
