package v1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ModuleState is where one module stands in one node's cache.
// +kubebuilder:validation:Enum=Pending;Ready;Failed
type ModuleState string

// Module states.
const (
	// ModulePending: the node needs the module and is fetching it.
	ModulePending ModuleState = "Pending"
	// ModuleReady: the verified module is on the node's disk under its sha256.
	ModuleReady ModuleState = "Ready"
	// ModuleFailed: fetching or verifying failed; see message. The daemon keeps retrying.
	ModuleFailed ModuleState = "Failed"
)

// NodeCacheModule is one module in a node's cache.
type NodeCacheModule struct {
	// digest is the module's "sha256:<hex>"; the file is <cache dir>/<hex>.
	// +kubebuilder:validation:Pattern=`^sha256:[a-f0-9]{64}$`
	Digest string `json:"digest"`

	// state is Pending, Ready or Failed.
	State ModuleState `json:"state"`

	// size of the module in bytes.
	// +optional
	Size int64 `json:"size,omitempty"`

	// message says why the state is not Ready.
	// +optional
	Message string `json:"message,omitempty"`

	// lastTransitionTime is when state last changed.
	// +optional
	LastTransitionTime metav1.Time `json:"lastTransitionTime,omitempty"`
}

// NodeCacheStatus is what one node's cache daemon reports.
type NodeCacheStatus struct {
	// conditions: Ready is True while the daemon runs and serves its directory.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// heartbeatTime is when the daemon last renewed its report (every --heartbeat-interval,
	// 20s by default, by the daemon's clock). The operator counts a node cache as ready only
	// while Ready is True and heartbeatTime is less than its --cache-heartbeat-grace (60s by
	// default) old, so a daemon killed without stopping, or a lost node whose Node object
	// remains, stops holding up rollouts after the grace period.
	// +optional
	HeartbeatTime *metav1.Time `json:"heartbeatTime,omitempty"`

	// modules lists every module the node holds or is fetching.
	// +optional
	// +listType=map
	// +listMapKey=digest
	Modules []NodeCacheModule `json:"modules,omitempty"`
}

// NodeCache reports which Wasm modules one node's cache holds. It is named after the node,
// written only by that node's wasme-cache daemon (an admission policy installed with the CRD
// refuses a wasme-cache token bound to another node), and read by the operator, which waits until
// every ready node holds a FilterDeployment's module before wiring it into Envoy.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,categories=wasme
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Heartbeat",type=date,JSONPath=`.status.heartbeatTime`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type NodeCache struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// status is the daemon's report.
	// +optional
	Status NodeCacheStatus `json:"status,omitempty"`
}

// NodeCacheList is a list of NodeCaches.
//
// +kubebuilder:object:root=true
type NodeCacheList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []NodeCache `json:"items"`
}
