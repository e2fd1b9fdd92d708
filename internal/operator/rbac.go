// Package operator reconciles FilterDeployments: it resolves and validates the filter image,
// waits for the node caches, patches the selected workloads and owns their EnvoyFilters.
package operator

// The operator's permissions; `make manifests` turns these into config/rbac/operator/role.yaml.
// Secrets are read one by one (get) from the FilterDeployment's namespace, never cached; they
// and ConfigMaps (public keys for signatures) are watched as metadata only, to re-verify when a
// key rotates: list and watch on Secrets, though the operator never lists their data;
// namespaces only for the admin's wasme.io/allow-insecure-registries label.
// Workloads are only patched (server-side apply), never updated or created.
// Pods are read (their metadata only) to count each workload's proxies for Programmed.
//
// +kubebuilder:rbac:groups=wasme.io,resources=filterdeployments,verbs=get;list;watch;patch;update
// +kubebuilder:rbac:groups=wasme.io,resources=filterdeployments/status,verbs=get;patch;update
// +kubebuilder:rbac:groups=wasme.io,resources=filterdeployments/finalizers,verbs=update
// +kubebuilder:rbac:groups=wasme.io,resources=nodecaches,verbs=get;list;watch
// +kubebuilder:rbac:groups=wasme.io,resources=modulesets,verbs=get;list;watch;create;patch;update
// +kubebuilder:rbac:groups=apps,resources=deployments;daemonsets;statefulsets,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=networking.istio.io,resources=envoyfilters,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch
// +kubebuilder:rbac:groups=wasme.io,resources=filterpolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;create,namespace=wasme
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;create;update,namespace=wasme
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete,namespace=wasme
