package v1

// Condition types, after the kstatus conventions: Ready is normal-true; Reconciling and
// Stalled are abnormal-true and absent when all is well.
const (
	// ReadyCondition is True when the filter runs on every selected workload.
	ReadyCondition = "Ready"
	// ReconcilingCondition is True while the operator is still working toward Ready.
	ReconcilingCondition = "Reconciling"
	// StalledCondition is True when progress needs a change to the spec or the cluster.
	StalledCondition = "Stalled"
	// ProgrammedCondition is True when the proxy of every pod of every selected workload has
	// accepted (ACKed) the configuration that carries the filter, as istiod reports it. It is
	// normal-true and independent of Ready: Ready says what the operator wrote, Programmed what
	// the proxies run. Unknown when istiod's proxy state cannot be read.
	ProgrammedCondition = "Programmed"
)

// Condition reasons.
const (
	// SucceededReason: the filter is on every selected workload.
	SucceededReason = "Succeeded"
	// ProgressingReason: the operator is working on a new generation or a changed cluster.
	ProgressingReason = "Progressing"
	// InvalidSpecReason: the spec cannot be honoured as written.
	InvalidSpecReason = "InvalidSpec"
	// ImageFailedReason: the image could not be resolved, pulled or validated.
	ImageFailedReason = "ImageFailed"
	// CachePendingReason: node caches do not hold the module yet.
	CachePendingReason = "CachePending"
	// IstioNotFoundReason: the EnvoyFilter API or istiod is missing.
	IstioNotFoundReason = "IstioNotFound"
	// WorkloadFailedReason: a selected workload could not be patched or given its EnvoyFilter.
	WorkloadFailedReason = "WorkloadFailed"
	// NoWorkloadsReason: nothing matches the selector.
	NoWorkloadsReason = "NoWorkloads"

	// ProgrammedReason (Programmed=True): every proxy ACKed the configuration with the filter.
	ProgrammedReason = "Programmed"
	// ProxyRejectedReason (Programmed=False): a proxy refused (NACKed) the configuration.
	ProxyRejectedReason = "ProxyRejected"
	// ProxiesPendingReason (Programmed=False): proxies are not connected or have not ACKed yet.
	ProxiesPendingReason = "ProxiesPending"
	// NotAppliedReason (Programmed=False): the operator has not written this generation's
	// configuration yet (see Ready).
	NotAppliedReason = "NotApplied"
	// ProxyStatusUnavailableReason (Programmed=Unknown): istiod's proxy state could not be read.
	ProxyStatusUnavailableReason = "ProxyStatusUnavailable"
	// ProxyStatusDisabledReason (Programmed=Unknown): the operator runs without proxy tracking.
	ProxyStatusDisabledReason = "ProxyStatusDisabled"
	// VerificationFailedReason: the image's signature is missing or does not verify with the
	// required keys, or the keys cannot be read.
	VerificationFailedReason = "VerificationFailed"
	// PolicyDeniedReason: a FilterPolicy does not allow the image's registry.
	PolicyDeniedReason = "PolicyDenied"
)

const (
	// Finalizer lets the operator remove its workload annotations before a FilterDeployment goes.
	Finalizer = "wasme.io/finalizer"

	// OperatorFieldManager owns every field the operator writes to objects it does not own.
	OperatorFieldManager = "wasme-operator"
	// CacheFieldManager owns what a node cache daemon writes.
	CacheFieldManager = "wasme-cache"

	// CacheDir is the node directory holding modules, mounted into the sidecars at the same path.
	CacheDir = "/var/local/lib/wasme-cache"
)
