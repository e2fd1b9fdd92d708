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

// reconcileIstio checks that Istio's EnvoyFilter API is served and tells the Istio version:
// the spec's override, else the istiod Deployments' in spec.deployment.istio.istioNamespace.
// The EnvoyFilter shape for that version goes to the pass; the status only shows the version.
func (r *FilterDeploymentReconciler) reconcileIstio(ctx context.Context, fd *wasmev1.FilterDeployment, p *pass) (stepResult, error) {
	if _, err := r.RESTMapper().RESTMapping(envoyFilterKind); err != nil {
		if apimeta.IsNoMatchError(err) {
			return stepResult{}, waiting(wasmev1.IstioNotFoundReason, 10*time.Second,
				fmt.Errorf("the EnvoyFilter API (networking.istio.io) is not installed: install Istio"))
		}
		return stepResult{}, fmt.Errorf("looking up the EnvoyFilter API: %w", err)
	}
	if err := r.ensureEnvoyFilterWatch(); err != nil {
		return stepResult{}, err
	}
	spec := fd.Spec.Deployment.Istio
	if spec.IstioVersion != "" {
		v, err := istio.ParseVersion(spec.IstioVersion)
		if err != nil {
			return stepResult{}, stalling(wasmev1.InvalidSpecReason, fmt.Errorf("spec.deployment.istio.istioVersion: %w", err))
		}
		fd.Status.IstioVersion = v.String()
		p.shape = istio.ShapeFor(v)
		return stepResult{}, nil
	}
	ns := spec.IstioNamespace
	if ns == "" {
		ns = "istio-system"
	}
	var deps appsv1.DeploymentList
	if err := r.List(ctx, &deps, client.InNamespace(ns)); err != nil {
		return stepResult{}, fmt.Errorf("listing Deployments in %s: %w", ns, err)
	}
	v, known, err := istio.DetectVersion(deps.Items)
	if err != nil {
		// istiod Deployments are watched: its arrival brings the next pass.
		return stepResult{}, waiting(wasmev1.IstioNotFoundReason, 0,
			fmt.Errorf("no istiod Deployment in namespace %s: install Istio, or set spec.deployment.istio.istioNamespace or istioVersion", ns))
	}
	p.shape = istio.ShapeFor(v)
	fd.Status.IstioVersion = v.String()
	if !known {
		fd.Status.IstioVersion += " (assumed)"
	}
	return stepResult{}, nil
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
