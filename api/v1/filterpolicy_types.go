package v1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// FilterPolicySpec says which namespaces it governs and what their filter images must be.
//
// +kubebuilder:validation:XValidation:rule="has(self.allowedRegistries) || has(self.requiredKeys)",message="set allowedRegistries, requiredKeys or both"
type FilterPolicySpec struct {
	// namespaceSelector picks the namespaces whose FilterDeployments this policy governs, by
	// their labels; empty or absent selects every namespace.
	// The API server refuses a selector whose expressions the operator could not use (an
	// unknown operator, In or NotIn without values, Exists or DoesNotExist with values), as
	// the operator fails closed on one: every namespace's images would be refused.
	// +optional
	// +kubebuilder:validation:XValidation:rule="!has(self.matchExpressions) || self.matchExpressions.all(e, e.operator in ['In', 'NotIn', 'Exists', 'DoesNotExist'])",message="matchExpressions: operator must be one of In, NotIn, Exists, DoesNotExist"
	// +kubebuilder:validation:XValidation:rule="!has(self.matchExpressions) || self.matchExpressions.all(e, !(e.operator in ['In', 'NotIn']) || (has(e.values) && size(e.values) > 0))",message="matchExpressions: In and NotIn need values"
	// +kubebuilder:validation:XValidation:rule="!has(self.matchExpressions) || self.matchExpressions.all(e, !(e.operator in ['Exists', 'DoesNotExist']) || !has(e.values) || size(e.values) == 0)",message="matchExpressions: Exists and DoesNotExist take no values"
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`

	// allowedRegistries: the image must be in one of these. An entry is a registry host
	// ("registry.example.com", "registry.example.com:5000"), which allows all of its
	// repositories, or a host and repository path ("registry.example.com/filters"), which
	// allows that repository and those under it. Absent allows any registry (the operator's
	// --allowed-registries still applies).
	// +optional
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=512
	// +kubebuilder:validation:items:XValidation:rule="self.matches('^[a-zA-Z0-9]([-a-zA-Z0-9.]*[a-zA-Z0-9])?(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*$')",message="must be a registry host[:port], optionally followed by a repository path"
	// +listType=atomic
	AllowedRegistries []string `json:"allowedRegistries,omitempty"`

	// requiredKeys: the image must be signed by one of these keys. They are read from the
	// operator's namespace (which tenants cannot write), never from the FilterDeployment's.
	// +optional
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=8
	// +listType=atomic
	RequiredKeys []KeyReference `json:"requiredKeys,omitempty"`
}

// FilterPolicy is an administrator's rule for the filter images of the namespaces it selects:
// which registries they may come from and whose signature they need. Every policy selecting a
// namespace applies (all must hold); a FilterDeployment an applicable policy refuses is
// Stalled with reason PolicyDenied or VerificationFailed and nothing reaches the nodes.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=fpol,categories=wasme
// +kubebuilder:printcolumn:name="Registries",type=string,JSONPath=`.spec.allowedRegistries`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type FilterPolicy struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the rule.
	// +required
	Spec FilterPolicySpec `json:"spec"`
}

// FilterPolicyList is a list of FilterPolicies.
//
// +kubebuilder:object:root=true
type FilterPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []FilterPolicy `json:"items"`
}
