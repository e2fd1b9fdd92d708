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
		p.version, p.shape = v, istio.ShapeFor(v)
		return stepResult{}, r.chooseDelivery(fd, v, p)
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
	p.version, p.shape = v, istio.ShapeFor(v)
	fd.Status.IstioVersion = v.String()
	if !known {
		fd.Status.IstioVersion += " (assumed)"
	}
	return stepResult{}, r.chooseDelivery(fd, v, p)
}

// ECDSMinVersion is the first Istio whose istio-agent fetches a remote Wasm module named in an
// extension config and rewrites it to a local file (the release that brought WasmPlugin).
var ECDSMinVersion = istio.Version{Major: 1, Minor: 12}

// chooseDelivery settles spec.delivery for Istio v into the pass and the status, and refuses
// the filter controls v cannot express.
func (r *FilterDeploymentReconciler) chooseDelivery(fd *wasmev1.FilterDeployment, v istio.Version, p *pass) error {
	if err := istio.CheckControls(controls(fd, p)); err != nil {
		return stalling(wasmev1.InvalidSpecReason, fmt.Errorf("on Istio %s: %w", v, err))
	}
	d, msg, err := deliveryFor(fd.Spec.Delivery, v)
	if err != nil {
		fd.Status.Delivery, fd.Status.DeliveryMessage = "", err.Error()
		return stalling(wasmev1.InvalidSpecReason, err)
	}
	p.delivery = d
	fd.Status.Delivery, fd.Status.DeliveryMessage = d, msg
	return nil
}

// deliveryFor is the delivery spec asks for on Istio v and why, or why it cannot be had.
func deliveryFor(spec wasmev1.Delivery, v istio.Version) (wasmev1.Delivery, string, error) {
	switch spec {
	case "", wasmev1.DeliveryAuto:
		// Until the ECDS path is proven end to end with a real istio-agent, auto keeps the
		// delivery every existing setup was tested with.
		return wasmev1.DeliveryMount, "mount: auto does not pick ECDS yet (its fetch by istio-agent is not proven here); set spec.delivery: ecds to opt in", nil
	case wasmev1.DeliveryMount:
		return wasmev1.DeliveryMount, "mount: spec.delivery is mount", nil
	case wasmev1.DeliveryECDS:
		if v.Less(ECDSMinVersion) {
			return "", "", fmt.Errorf("spec.delivery ecds needs Istio %s or later (istio-agent fetching Wasm modules), found %s: use mount or auto", ECDSMinVersion, v)
		}
		return wasmev1.DeliveryECDS, "ecds: spec.delivery is ecds", nil
	}
	return "", "", fmt.Errorf("spec.delivery %q: must be auto, ecds or mount", spec)
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
