package v1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ModuleSetName is the name of the one ModuleSet the operator writes.
const ModuleSetName = "cluster"

// ModuleSetSpec lists the modules the node caches must hold.
type ModuleSetSpec struct {
	// digests are the "sha256:<hex>" digests every node cache keeps on disk: each
	// FilterDeployment's status.moduleDigest (the module being rolled out) and
	// status.deployedModuleDigest (the one its proxies load now), sorted.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=10000
	// +kubebuilder:validation:items:Pattern=`^sha256:[a-f0-9]{64}$`
	Digests []string `json:"digests,omitempty"`
}

// ModuleSet is the union of the modules that FilterDeployments need, written by the operator
// (one object, named "cluster") so that each node cache watches one small object instead of
// every FilterDeployment of the cluster: a status write to a FilterDeployment reaches the
// nodes only when it changes which modules are needed.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,categories=wasme
// +kubebuilder:validation:XValidation:rule="self.metadata.name == 'cluster'",message="the ModuleSet is named cluster"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ModuleSet struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the operator's list. Server-side apply turns an emptied spec into null, which
	// means no module is needed.
	// +optional
	// +nullable
	Spec ModuleSetSpec `json:"spec,omitempty"`
}

// ModuleSetList is a list of ModuleSets.
//
// +kubebuilder:object:root=true
type ModuleSetList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ModuleSet `json:"items"`
}
