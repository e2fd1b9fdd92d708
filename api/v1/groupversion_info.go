// Package v1 contains the wasme.io/v1 API: FilterDeployment, which deploys a WebAssembly
// (proxy-wasm) filter stored as an OCI image into the Envoy sidecars of selected workloads.
//
// +kubebuilder:object:generate=true
// +groupName=wasme.io
package v1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of this API.
	GroupVersion = schema.GroupVersion{Group: "wasme.io", Version: "v1"}

	// SchemeBuilder registers this API's types with a runtime.Scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds this API's types to a runtime.Scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
