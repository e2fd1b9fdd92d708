package v1

import (
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// FilterDeploymentSpec says which filter to deploy and where.
type FilterDeploymentSpec struct {
	// filter is the WebAssembly filter to deploy: its image, configuration and root id.
	// +required
	Filter FilterSpec `json:"filter"`

	// deployment selects the workloads whose Envoy sidecars get the filter.
	// +required
	Deployment DeploymentSpec `json:"deployment"`

	// delivery is how the module reaches the proxies. "mount" is the original's: the node
	// cache's hostPath is mounted into the sidecars through annotations (the pods roll once) and
	// an EnvoyFilter loads the module from that file. "ecds" patches no workload: EnvoyFilters
	// define the filter as an extension config (ECDS) whose code istio-agent fetches from the
	// node-local cache Service and checks against the module's sha256. "auto" (the default)
	// picks for the detected Istio and says in status.delivery which one and why; for now it
	// always picks mount, since agent-side fetching is not yet proven with wasme's cache.
	// +optional
	// +kubebuilder:default=auto
	Delivery Delivery `json:"delivery,omitempty"`
}

// Delivery is how a filter's module reaches the proxies: auto, ecds or mount.
// +kubebuilder:validation:Enum=auto;ecds;mount
type Delivery string

// Deliveries.
const (
	// DeliveryAuto lets the operator pick ecds or mount for the detected Istio.
	DeliveryAuto Delivery = "auto"
	// DeliveryECDS delivers the filter as an Envoy extension config, patching no workload.
	DeliveryECDS Delivery = "ecds"
	// DeliveryMount mounts the node cache into the sidecars and loads the module from a file.
	DeliveryMount Delivery = "mount"
)

// FilterSpec describes one proxy-wasm HTTP filter packaged as an OCI image.
// +kubebuilder:validation:XValidation:rule="!has(self.patchContext) || !has(self.match)",message="patchContext and match are exclusive: match replaces patchContext"
type FilterSpec struct {
	// id names the filter in Envoy (the Wasm plugin name and VM id) and in the names of the
	// EnvoyFilters created for it ("<workload>-<id>"). Defaults to "<name>.<namespace>" of this
	// FilterDeployment. Two FilterDeployments on one workload need different ids.
	// +optional
	// +kubebuilder:validation:MaxLength=200
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')",message="must consist of lower case alphanumerics, '-' or '.', and start and end with an alphanumeric"
	ID string `json:"id,omitempty"`

	// image is the OCI reference of the filter image, by tag or by digest, for example
	// "registry.example.com/filters/custom-header:v0.1" or "registry.example.com/filters/auth@sha256:<hex>".
	// Tags are resolved to a digest by the operator and re-resolved periodically, so a re-pushed
	// tag rolls out; a digest pins the module.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule="self.matches('^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:[.][a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*)*(?::[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$')",message="must be an OCI image reference such as registry.example.com/repo:tag or registry.example.com/repo@sha256:<hex>"
	Image string `json:"image"`

	// config is passed to the filter's proxy_on_configure. A plain string is delivered as is;
	// an object without "@type" is delivered as its JSON text (as Istio's WasmPlugin delivers
	// pluginConfig); or the protobuf Any form {"@type": "type.googleapis.com/google.protobuf.StringValue",
	// "value": "..."}; "@type" may also be google.protobuf.BytesValue (value in base64) or
	// google.protobuf.Struct (value an object, delivered as JSON).
	// +optional
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:pruning:PreserveUnknownFields
	Config *apiextensionsv1.JSON `json:"config,omitempty"`

	// rootID is the root context id the filter registers (its proxy_on_context_create root).
	// Defaults to the first root id in the image's runtime configuration.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	RootID string `json:"rootID,omitempty"`

	// imagePullOptions says how the operator reaches the registry. Only the operator pulls;
	// nodes get the module from the operator, never with these credentials.
	// +optional
	ImagePullOptions *ImagePullOptions `json:"imagePullOptions,omitempty"`

	// patchContext is where in Envoy the filter is inserted: "inbound" (the default: requests
	// arriving at the workload), "outbound" (requests the workload makes), "gateway" (Istio
	// gateways) or "any". Case-insensitive.
	// +optional
	// +kubebuilder:validation:XValidation:rule="self.lowerAscii() in ['', 'any', 'inbound', 'outbound', 'gateway']",message="must be one of any, inbound, outbound, gateway"
	PatchContext string `json:"patchContext,omitempty"`

	// verify requires the image to be signed by one of these keys (cosign's signature format,
	// see docs/security.md). The operator verifies the manifest digest the reference resolves
	// to before it pulls the module; an image without such a signature is refused and nothing
	// reaches the nodes. A FilterPolicy may require signatures too: then both must hold.
	// +optional
	Verify *ImageVerification `json:"verify,omitempty"`

	// match restricts the filter to traffic of one direction and to some ports, as Istio's
	// WasmPlugin does: mode SERVER is the workload's inbound traffic, CLIENT its outbound,
	// CLIENT_AND_SERVER (the default) both, including gateways; ports (empty: all) are the
	// inbound ports the workload serves or the outbound ports it calls. Each entry adds its
	// own insertion; the filter runs once per request whichever entries match it. Exclusive
	// with patchContext, the original's field, which keeps working as before.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=8
	Match []TrafficSelector `json:"match,omitempty"`

	// failStrategy is what a proxy does when the filter cannot run. "FailClose" (the default)
	// answers the request with an error; "FailOpen" lets the request through without the
	// filter; "FailReload" (Istio 1.23 and later) starts a new VM and retries. It becomes
	// Envoy's failure_policy, and in ECDS delivery it is also what istio-agent puts in the
	// filter's place when it cannot fetch the module: a deny-all filter for FailClose and
	// FailReload, an allow-all filter for FailOpen.
	// +optional
	// +kubebuilder:validation:Enum=FailClose;FailOpen;FailReload
	FailStrategy FailStrategy `json:"failStrategy,omitempty"`

	// phase places the filter in the HTTP filter chain among Istio's own filters, with the
	// names of Istio's WasmPlugin: "AUTHN" and "AUTHZ" at the head of the chain, before
	// Istio's authentication and authorization filters (all AUTHN filters before all AUTHZ
	// filters); "STATS" and "UNSPECIFIED" (the default) just before the router, after Istio's
	// own filters (STATS first). Phases other than UNSPECIFIED need Istio 1.10 or later.
	// +optional
	// +kubebuilder:validation:Enum=AUTHN;AUTHZ;STATS;UNSPECIFIED
	Phase Phase `json:"phase,omitempty"`

	// priority orders the filters of one phase on a workload: higher runs first. Filters of
	// equal phase and priority run in the order of their FilterDeployments' names, never in
	// the order they were created. Default 0.
	// +optional
	// +kubebuilder:validation:Minimum=-1000
	// +kubebuilder:validation:Maximum=1000
	Priority *int32 `json:"priority,omitempty"`

	// vmConfig configures the filter's VM.
	// +optional
	VMConfig *VMConfig `json:"vmConfig,omitempty"`
}

// FailStrategy is what a proxy does when a filter cannot run: FailClose, FailOpen or FailReload.
type FailStrategy string

// Fail strategies.
const (
	// FailClose refuses the traffic the filter would have seen.
	FailClose FailStrategy = "FailClose"
	// FailOpen lets the traffic through without the filter.
	FailOpen FailStrategy = "FailOpen"
	// FailReload starts a new VM and retries; refused like FailClose while it cannot.
	FailReload FailStrategy = "FailReload"
)

// Phase is where in the HTTP filter chain a filter runs: AUTHN, AUTHZ, STATS or UNSPECIFIED.
type Phase string

// Phases, in chain order.
const (
	// PhaseAuthN runs before Istio's authentication filters.
	PhaseAuthN Phase = "AUTHN"
	// PhaseAuthZ runs after the AUTHN filters, before Istio's authorization filters.
	PhaseAuthZ Phase = "AUTHZ"
	// PhaseStats runs after Istio's filters, before the UNSPECIFIED ones.
	PhaseStats Phase = "STATS"
	// PhaseUnspecified runs last, just before the router.
	PhaseUnspecified Phase = "UNSPECIFIED"
)

// TrafficSelector is one direction of traffic, and optionally some ports, the filter acts on.
type TrafficSelector struct {
	// mode is SERVER (traffic the workload receives), CLIENT (traffic it sends) or
	// CLIENT_AND_SERVER (both; the default).
	// +optional
	// +kubebuilder:validation:Enum=CLIENT;SERVER;CLIENT_AND_SERVER
	Mode TrafficMode `json:"mode,omitempty"`

	// ports restricts the selector to these port numbers; empty means every port.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:Minimum=1
	// +kubebuilder:validation:items:Maximum=65535
	Ports []int32 `json:"ports,omitempty"`
}

// TrafficMode is a direction of traffic: CLIENT, SERVER or CLIENT_AND_SERVER.
type TrafficMode string

// Traffic modes.
const (
	// ModeClient is traffic the workload sends.
	ModeClient TrafficMode = "CLIENT"
	// ModeServer is traffic the workload receives.
	ModeServer TrafficMode = "SERVER"
	// ModeClientAndServer is both.
	ModeClientAndServer TrafficMode = "CLIENT_AND_SERVER"
)

// VMConfig configures a filter's Wasm VM.
type VMConfig struct {
	// env are the environment variables the filter's VM sees (WASI environ), as Envoy's
	// vm_config.environment_variables: a value given inline, or the value of the proxy's own
	// environment variable of that name (valueFrom HOST).
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=64
	Env []EnvVar `json:"env,omitempty"`
}

// EnvVar is one environment variable of a filter's VM.
// +kubebuilder:validation:XValidation:rule="!has(self.valueFrom) || self.valueFrom != 'HOST' || !has(self.value)",message="value must be empty when valueFrom is HOST: the value is the proxy's own"
type EnvVar struct {
	// name of the variable.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:XValidation:rule="!self.contains('=')",message="must not contain '='"
	Name string `json:"name"`

	// valueFrom is INLINE (the default: value below) or HOST (the proxy's environment
	// variable of the same name).
	// +optional
	// +kubebuilder:validation:Enum=INLINE;HOST
	ValueFrom EnvValueSource `json:"valueFrom,omitempty"`

	// value is the variable's value when valueFrom is INLINE.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	Value string `json:"value,omitempty"`
}

// EnvValueSource says where an EnvVar's value comes from: INLINE or HOST.
type EnvValueSource string

// Value sources.
const (
	// EnvInline takes the value from the EnvVar.
	EnvInline EnvValueSource = "INLINE"
	// EnvHost takes the proxy's own environment variable of the same name.
	EnvHost EnvValueSource = "HOST"
)

// ImageVerification names the public keys one of which must have signed the image.
type ImageVerification struct {
	// keys are where the public keys are: a signature by any one of them suffices.
	// +required
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=8
	// +listType=atomic
	Keys []KeyReference `json:"keys"`
}

// KeyReference is a key of a Secret or ConfigMap whose value holds PEM public keys (one or
// more "PUBLIC KEY" blocks, as cosign.pub). For a FilterDeployment it is read from the
// FilterDeployment's namespace; for a FilterPolicy from the operator's namespace.
type KeyReference struct {
	// kind is Secret or ConfigMap. Both are watched (metadata only): a change re-verifies at
	// once.
	// +required
	// +kubebuilder:validation:Enum=Secret;ConfigMap
	Kind string `json:"kind"`

	// name of the Secret or ConfigMap.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="must be the name of a Secret or ConfigMap"
	Name string `json:"name"`

	// key in its data; "cosign.pub" when empty.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[-._a-zA-Z0-9]+$')",message="must be a Secret or ConfigMap data key"
	Key string `json:"key,omitempty"`
}

// DefaultPublicKeyKey is the data key a KeyReference reads when it names none.
const DefaultPublicKeyKey = "cosign.pub"

// ImagePullOptions are the registry settings for pulling the filter image.
type ImagePullOptions struct {
	// pullSecret is the name of a Secret in this FilterDeployment's namespace holding registry
	// credentials: type kubernetes.io/dockerconfigjson, or the original's keys "username" and
	// "password".
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="must be the name of a Secret in this namespace"
	PullSecret string `json:"pullSecret,omitempty"`

	// insecureSkipVerify skips verification of the registry's TLS certificate.
	// +optional
	InsecureSkipVerify bool `json:"insecureSkipVerify,omitempty"`

	// plainHttp talks to the registry over plain HTTP instead of HTTPS.
	// +optional
	PlainHTTP bool `json:"plainHttp,omitempty"`
}

// DeploymentSpec says where the filter goes. Istio is the only supported mesh.
type DeploymentSpec struct {
	// istio selects workloads in this FilterDeployment's namespace whose Istio sidecars get
	// the filter.
	// +required
	Istio IstioDeploymentSpec `json:"istio"`
}

// IstioDeploymentSpec selects Istio-injected workloads of one kind.
type IstioDeploymentSpec struct {
	// kind of the selected workloads: Deployment, DaemonSet or StatefulSet (any case).
	// +optional
	// +kubebuilder:default=Deployment
	// +kubebuilder:validation:XValidation:rule="self.lowerAscii() in ['deployment', 'daemonset', 'statefulset']",message="must be one of Deployment, DaemonSet, StatefulSet"
	Kind string `json:"kind,omitempty"`

	// labels select workloads of that kind in this namespace by equality. A workload matches
	// when its own labels or its pod template's labels contain all of them. Empty selects
	// every workload of the kind in the namespace.
	// +optional
	// +kubebuilder:validation:MaxProperties=64
	// +kubebuilder:validation:XValidation:rule="self.all(k, size(k) <= 317 && k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'))",message="keys must be valid label keys: an optional DNS subdomain prefix and '/', then a name of at most 63 alphanumerics, '-', '_' or '.'"
	Labels map[string]LabelValue `json:"labels,omitempty"`

	// istioNamespace is where istiod runs; the operator reads the Istio version from the istiod
	// Deployment there to shape the EnvoyFilters.
	// +optional
	// +kubebuilder:default=istio-system
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="must be a valid namespace name"
	IstioNamespace string `json:"istioNamespace,omitempty"`

	// istioVersion overrides the detected Istio version ("1.5", "1.7", "1.24", ...) when the
	// istiod image tag does not tell it.
	// +optional
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="self.matches('^[0-9]+[.][0-9]+([.][0-9]+)?([-+].*)?$')",message="must be a version such as 1.7 or 1.24.2"
	IstioVersion string `json:"istioVersion,omitempty"`
}

// LabelValue is a Kubernetes label value.
// +kubebuilder:validation:MaxLength=63
// +kubebuilder:validation:XValidation:rule="self.matches('^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$')",message="must be a valid label value: at most 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
type LabelValue string

// WorkloadState is where the filter stands on one workload.
// +kubebuilder:validation:Enum=Pending;Succeeded;Failed
type WorkloadState string

// Workload states.
const (
	// WorkloadPending means the workload is selected but the filter is not on it yet.
	WorkloadPending WorkloadState = "Pending"
	// WorkloadSucceeded means the workload is patched and its EnvoyFilter is in place.
	WorkloadSucceeded WorkloadState = "Succeeded"
	// WorkloadFailed means the filter could not be put on the workload; see reason.
	WorkloadFailed WorkloadState = "Failed"
)

// WorkloadStatus is the filter's state on one selected workload.
type WorkloadStatus struct {
	// state is Pending, Succeeded or Failed.
	State WorkloadState `json:"state"`

	// reason says why the state is not Succeeded.
	// +optional
	Reason string `json:"reason,omitempty"`

	// proxies is "<programmed>/<pods>": of the workload's pods, those whose proxy ACKed the
	// configuration that carries the filter, as istiod reports it.
	// +optional
	Proxies string `json:"proxies,omitempty"`

	// notProgrammed lists the workload's pods whose proxy does not run the filter, with why
	// (the proxy's NACK message, not connected, not ACKed yet); at most 20 are listed.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=20
	NotProgrammed []PodProxyStatus `json:"notProgrammed,omitempty"`

	// configuredTime is when the operator last changed this workload's EnvoyFilter. A proxy
	// counts as programmed only for a configuration istiod sent it after then.
	// +optional
	ConfiguredTime *metav1.MicroTime `json:"configuredTime,omitempty"`
}

// ProxyState is where one pod's proxy stands with the filter's configuration.
// +kubebuilder:validation:Enum=Programmed;Pending;Rejected;NotConnected
type ProxyState string

// Proxy states.
const (
	// ProxyProgrammed: the proxy ACKed the configuration with the filter.
	ProxyProgrammed ProxyState = "Programmed"
	// ProxyPending: connected, but it has not ACKed the configuration with the filter yet (or,
	// in mount delivery, the pod predates the cache mount and gets the filter when it rolls).
	ProxyPending ProxyState = "Pending"
	// ProxyRejected: the proxy refused (NACKed) the configuration; message is its error.
	ProxyRejected ProxyState = "Rejected"
	// ProxyNotConnected: istiod knows no proxy of this pod.
	ProxyNotConnected ProxyState = "NotConnected"
)

// PodProxyStatus is one pod's proxy, as istiod reports it.
type PodProxyStatus struct {
	// pod is the pod's name.
	Pod string `json:"pod"`
	// state is Programmed, Pending, Rejected or NotConnected.
	State ProxyState `json:"state"`
	// message is the proxy's NACK message, or why the state is what it is.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Message string `json:"message,omitempty"`
}

// FilterDeploymentStatus is what the operator observed and did.
type FilterDeploymentStatus struct {
	// observedGeneration is the metadata.generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready (the filter is on every selected workload), Reconciling (work in
	// progress), Stalled (cannot progress without a change to the spec or the cluster) and
	// Programmed (every selected pod's proxy ACKed the configuration with the filter, as
	// istiod reports it; see docs/status.md).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// workloads maps each selected workload's name to the filter's state on it.
	// +optional
	Workloads map[string]WorkloadStatus `json:"workloads,omitempty"`

	// workloadsReady is "<succeeded>/<selected>" workloads, for kubectl get.
	// +optional
	WorkloadsReady string `json:"workloadsReady,omitempty"`

	// reason is the error that stopped the last pass, empty when it succeeded.
	// +optional
	Reason string `json:"reason,omitempty"`

	// imageDigest is the manifest digest the image reference resolved to.
	// +optional
	ImageDigest string `json:"imageDigest,omitempty"`

	// moduleDigest is the sha256 digest of the .wasm module; node caches store the module
	// under its hex part, which is the file Envoy loads.
	// +optional
	ModuleDigest string `json:"moduleDigest,omitempty"`

	// deployedModuleDigest is the module the EnvoyFilters load now. While a new module (a
	// re-pushed tag, a changed image) is still being cached it differs from moduleDigest, and
	// node caches keep both, so the running filter's file never goes away under it.
	// +optional
	DeployedModuleDigest string `json:"deployedModuleDigest,omitempty"`

	// rootID is the root id in effect: spec.filter.rootID or the image's default.
	// +optional
	RootID string `json:"rootID,omitempty"`

	// istioVersion is the Istio version the EnvoyFilters are shaped for.
	// +optional
	IstioVersion string `json:"istioVersion,omitempty"`

	// cachedNodes is how many node caches hold the module.
	// +optional
	CachedNodes int32 `json:"cachedNodes,omitempty"`

	// cacheNodes is how many ready node caches must hold the module.
	// +optional
	CacheNodes int32 `json:"cacheNodes,omitempty"`

	// delivery is the delivery in effect, ecds or mount: spec.delivery, or what auto picked.
	// +optional
	Delivery Delivery `json:"delivery,omitempty"`

	// deliveryMessage says why that delivery is in effect.
	// +optional
	DeliveryMessage string `json:"deliveryMessage,omitempty"`

	// proxiesProgrammed is "<programmed>/<pods>" over every selected workload, for kubectl get.
	// +optional
	ProxiesProgrammed string `json:"proxiesProgrammed,omitempty"`
	// verifiedSignature says who signed imageDigest, when spec.filter.verify or a FilterPolicy
	// requires a signature. It is set only once every requirement verified.
	// +optional
	VerifiedSignature *VerifiedSignature `json:"verifiedSignature,omitempty"`
}

// VerifiedSignature is the outcome of a successful signature verification.
type VerifiedSignature struct {
	// digest is the manifest digest the signatures cover: the one deployed.
	Digest string `json:"digest"`

	// signers are the IDs of the keys whose signatures verified ("sha256:" and the hex SHA-256
	// of the key's DER encoding; wasme keygen prints it), one per requirement.
	// +listType=atomic
	Signers []string `json:"signers"`

	// requiredBy names what asked for a signature: "spec.filter.verify" and
	// "FilterPolicy/<name>".
	// +optional
	// +listType=atomic
	RequiredBy []string `json:"requiredBy,omitempty"`
}

// FilterDeployment deploys a WebAssembly filter from an OCI image into the Envoy sidecars of
// the selected workloads: the node caches fetch the module, the operator mounts the cache into
// the sidecars and creates one EnvoyFilter per workload. Deleting it removes all of that.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=fd;fds,categories=wasme
// +kubebuilder:printcolumn:name="Image",type=string,JSONPath=`.spec.filter.image`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Workloads",type=string,JSONPath=`.status.workloadsReady`
// +kubebuilder:printcolumn:name="Programmed",type=string,JSONPath=`.status.conditions[?(@.type=="Programmed")].status`
// +kubebuilder:printcolumn:name="Proxies",type=string,JSONPath=`.status.proxiesProgrammed`
// +kubebuilder:printcolumn:name="Delivery",type=string,JSONPath=`.status.delivery`,priority=1
// +kubebuilder:printcolumn:name="Cached",type=integer,JSONPath=`.status.cachedNodes`,priority=1
// +kubebuilder:printcolumn:name="Status",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].message`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type FilterDeployment struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired filter and its target workloads.
	// +required
	Spec FilterDeploymentSpec `json:"spec"`

	// status is what the operator observed.
	// +optional
	Status FilterDeploymentStatus `json:"status,omitempty"`
}

// FilterDeploymentList is a list of FilterDeployments.
//
// +kubebuilder:object:root=true
type FilterDeploymentList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []FilterDeployment `json:"items"`
}
