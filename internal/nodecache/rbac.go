// Package nodecache is the node daemon: it learns which modules its node needs, fetches and
// verifies each once, stores it under its sha256, serves it to the node's proxies and reports.
package nodecache

// The node daemon's permissions; `make manifests` turns these into config/rbac/cache/role.yaml.
// It reads the ModuleSet to learn the digests its node needs (not FilterDeployments, whose status
// changes many times per rollout) and has no access to Secrets.
// It writes only its own NodeCache (a ClusterRole cannot name the object per node; the
// daemon applies NodeCache/<its node> and nothing else). It reads its Node for the owner
// reference that garbage collects the NodeCache with the node.
//
// +kubebuilder:rbac:groups=wasme.io,resources=modulesets,verbs=get;list;watch
// +kubebuilder:rbac:groups=wasme.io,resources=nodecaches,verbs=get;list;watch;create;patch;update
// +kubebuilder:rbac:groups=wasme.io,resources=nodecaches/status,verbs=get;patch;update
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
