// Package nodecache is the node daemon: it learns which modules its node needs, fetches and
// verifies each once, stores it under its sha256, serves it to the node's proxies and reports.
package nodecache

// The node daemon's permissions; `make manifests` turns these into config/rbac/cache/role.yaml.
// It reads FilterDeployments to learn the digests its node needs and has no access to Secrets.
//
// +kubebuilder:rbac:groups=wasme.io,resources=filterdeployments,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
