// Package v1 contains the wasme.io/v1 API: FilterDeployment, which deploys a WebAssembly
// (proxy-wasm) filter stored as an OCI image into the Envoy sidecars of selected workloads.
//
// +kubebuilder:object:generate=true
// +kubebuilder:ac:generate=true
// +groupName=wasme.io
package v1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of this API.
	GroupVersion = schema.GroupVersion{Group: "wasme.io", Version: "v1"}

	// SchemeGroupVersion is GroupVersion under the name generated code (the apply
	// configurations in applyconfiguration/) expects.
	SchemeGroupVersion = GroupVersion

	// SchemeBuilder registers this API's types with a runtime.Scheme. It is apimachinery's
	// builder rather than controller-runtime's (deprecated), so importing the API does not
	// import controller-runtime.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds this API's types to a runtime.Scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &FilterDeployment{}, &FilterDeploymentList{}, &NodeCache{}, &NodeCacheList{}, &ModuleSet{}, &ModuleSetList{}, &FilterPolicy{}, &FilterPolicyList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
