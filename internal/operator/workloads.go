package operator

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"

	"golang.org/x/sync/errgroup"
	networkingv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/discovery"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/istio"
)

// The sidecar annotations that mount the node cache into Envoy, as the original wrote them when
// the workload had none of its own, except that the mount is read-only: a sidecar (which
// workload annotations can make run as uid 0) must not be able to write into the hostPath
// that every pod of the node loads modules from.
const (
	UserVolumeAnnotation      = "sidecar.istio.io/userVolume"
	UserVolumeMountAnnotation = "sidecar.istio.io/userVolumeMount"
	// UserVolume and UserVolumeMount are the values for the default cache directory
	// (wasmev1.CacheDir); CacheVolumes gives them for another.
	UserVolume      = `[{"name":"cache-dir","hostPath":{"path":"/var/local/lib/wasme-cache"}}]`
	UserVolumeMount = `[{"mountPath":"/var/local/lib/wasme-cache","name":"cache-dir","readOnly":true}]`

	// OriginalAnnotation, on a workload's own metadata (so writing it rolls nothing), records
	// the user's values of the two sidecar annotations before wasme merged its volume in, as a
	// JSON object; it is what removal restores, byte for byte. Its presence marks the workload
	// as patched by wasme.
	OriginalAnnotation = "wasme.io/original-sidecar-annotations"

	// WorkloadAnnotation on an EnvoyFilter names the workload it serves ("Kind/name").
	WorkloadAnnotation = "wasme.io/workload"

	// CacheMountedLabel ("true") on a patched workload's pod template marks pods that mount the
	// node cache; the workload's EnvoyFilters select it (see filterSelector).
	CacheMountedLabel = "wasme.io/cache-mounted"
)

// workloadParallelism bounds the concurrent workload patches of one FilterDeployment.
const workloadParallelism = 8

// workload is one Deployment, DaemonSet or StatefulSet, reduced to what wasme needs.
type workload struct {
	kind, name, namespace string
	labels, annotations   map[string]string
	templateLabels        map[string]string
	templateAnnotations   map[string]string
}

func (w workload) key() string { return w.kind + "/" + w.name }

// listWorkloads lists the workloads of one kind in a namespace.
func (r *FilterDeploymentReconciler) listWorkloads(ctx context.Context, ns, kind string) ([]workload, error) {
	var out []workload
	add := func(kind string, o metav1.Object, tmpl metav1.ObjectMeta) {
		out = append(out, workload{kind: kind, name: o.GetName(), namespace: o.GetNamespace(), labels: o.GetLabels(),
			annotations: o.GetAnnotations(), templateLabels: tmpl.Labels, templateAnnotations: tmpl.Annotations})
	}
	in := client.InNamespace(ns)
	switch kind {
	case "Deployment":
		var l appsv1.DeploymentList
		if err := r.List(ctx, &l, in); err != nil {
			return nil, err
		}
		for i := range l.Items {
			add(kind, &l.Items[i], l.Items[i].Spec.Template.ObjectMeta)
		}
	case "DaemonSet":
		var l appsv1.DaemonSetList
		if err := r.List(ctx, &l, in); err != nil {
			return nil, err
		}
		for i := range l.Items {
			add(kind, &l.Items[i], l.Items[i].Spec.Template.ObjectMeta)
		}
	case "StatefulSet":
		var l appsv1.StatefulSetList
		if err := r.List(ctx, &l, in); err != nil {
			return nil, err
		}
		for i := range l.Items {
			add(kind, &l.Items[i], l.Items[i].Spec.Template.ObjectMeta)
		}
	}
	slices.SortFunc(out, func(a, b workload) int { return strings.Compare(a.name, b.name) })
	return out, nil
}

// selects tells whether fd selects w: same kind, and every label of the selector among the
// workload's own labels or among its pod template's (the original looked only at the former,
// and Deployments labelled only through their template were silently skipped).
func selects(fd *wasmev1.FilterDeployment, w workload) bool {
	kind, err := fd.Spec.Deployment.Istio.WorkloadKind()
	if err != nil || kind != w.kind || fd.Namespace != w.namespace {
		return false
	}
	sel := labels.SelectorFromSet(selectorLabels(fd))
	return sel.Matches(labels.Set(w.labels)) || sel.Matches(labels.Set(w.templateLabels))
}

func selectorLabels(fd *wasmev1.FilterDeployment) map[string]string {
	out := make(map[string]string, len(fd.Spec.Deployment.Istio.Labels))
	for k, v := range fd.Spec.Deployment.Istio.Labels {
		out[k] = string(v)
	}
	return out
}

// selectedWorkloads lists the workloads fd selects, sorted by name.
func (r *FilterDeploymentReconciler) selectedWorkloads(ctx context.Context, fd *wasmev1.FilterDeployment) ([]workload, error) {
	kind, err := fd.Spec.Deployment.Istio.WorkloadKind()
	if err != nil {
		return nil, stalling(wasmev1.InvalidSpecReason, err)
	}
	all, err := r.listWorkloads(ctx, fd.Namespace, kind)
	if err != nil {
		return nil, fmt.Errorf("listing %ss: %w", kind, err)
	}
	var selected []workload
	for _, w := range all {
		if selects(fd, w) {
			selected = append(selected, w)
		}
	}
	return selected, nil
}

// envoyFilterName is the EnvoyFilter wasme writes for one workload of fd.
func envoyFilterName(fd *wasmev1.FilterDeployment, w workload) string {
	return w.name + "-" + fd.FilterID()
}

// reconcileWorkloads patches every selected workload and gives it its EnvoyFilter. A failing
// workload is reported and does not stop the others.
func (r *FilterDeploymentReconciler) reconcileWorkloads(ctx context.Context, fd *wasmev1.FilterDeployment, p *pass) (stepResult, error) {
	base, err := r.filterTemplate(ctx, fd, p)
	if err != nil {
		return stepResult{}, err
	}
	selected, err := r.selectedWorkloads(ctx, fd)
	if err != nil {
		return stepResult{}, err
	}
	p.reachedWorkloads = true

	// Workloads are independent: apply them a few at a time, so a namespace of hundreds does
	// not cost hundreds of sequential round trips.
	errs := make([]error, len(selected))
	configured := make([]applied, len(selected))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(workloadParallelism)
	for i, w := range selected {
		g.Go(func() error {
			f := base
			f.Name, f.WorkloadLabels = envoyFilterName(fd, w), filterSelector(w)
			if p.delivery == wasmev1.DeliveryECDS {
				// Nothing to mount: every pod of the workload, old or new, can fetch.
				f.WorkloadLabels = maps.Clone(w.templateLabels)
				f.ModuleURL = istio.ModuleURL(r.moduleURLBase(), f.ModuleSHA256)
				configured[i], errs[i] = r.applyEnvoyFilter(gctx, fd, f, w)
				return nil
			}
			errs[i] = r.patchWorkload(gctx, w)
			if errs[i] == nil {
				configured[i], errs[i] = r.applyEnvoyFilter(gctx, fd, f, w)
			}
			return nil
		})
	}
	_ = g.Wait() // failures are per workload, in errs
	statuses := map[string]wasmev1.WorkloadStatus{}
	var failures []string
	for i, w := range selected {
		if err := errs[i]; err != nil {
			statuses[w.name] = wasmev1.WorkloadStatus{State: wasmev1.WorkloadFailed, Reason: truncate(err.Error(), maxMessageBytes)}
			failures = append(failures, fmt.Sprintf("%s: %v", w.name, err))
			continue
		}
		prev := fd.Status.Workloads[w.name]
		ws := wasmev1.WorkloadStatus{State: wasmev1.WorkloadSucceeded, Proxies: prev.Proxies, NotProgrammed: prev.NotProgrammed,
			ConfiguredTime: prev.ConfiguredTime}
		// A written EnvoyFilter changed now; an unchanged one keeps the time of its last change
		// (or, in a status from before that was recorded, its creation).
		switch a := configured[i]; {
		case a.written:
			now := metav1.NowMicro()
			ws.ConfiguredTime = &now
		case ws.ConfiguredTime == nil:
			ws.ConfiguredTime = &metav1.MicroTime{Time: a.created.Time}
		}
		statuses[w.name] = ws
		p.applied = append(p.applied, w)
	}
	fd.Status.Workloads = statuses
	switch {
	case len(failures) > 0:
		return stepResult{}, failed(wasmev1.WorkloadFailedReason,
			fmt.Errorf("applying filter to %d of %d workloads failed: %s", len(failures), len(selected), listSome(failures)))
	case len(selected) == 0:
		kind, _ := fd.Spec.Deployment.Istio.WorkloadKind()
		// Workloads are watched: one that comes or is relabelled brings the next pass.
		return stepResult{}, waiting(wasmev1.NoWorkloadsReason, 0,
			fmt.Errorf("no %s in namespace %s matches labels %v", kind, fd.Namespace, selectorLabels(fd)))
	}
	fd.Status.DeployedModuleDigest = fd.Status.ModuleDigest
	return stepResult{}, nil
}

// filterSelector selects the pods of w that mount the node cache: the pod template's labels
// plus CacheMountedLabel, which is added in the same patch as the mount. Pods started before the
// patch lack both, so they are never handed a filter whose module they cannot read (Envoy
// would NACK the listener and keep running without it until the pod rolls).
func filterSelector(w workload) map[string]string {
	sel := maps.Clone(w.templateLabels)
	if sel == nil {
		sel = map[string]string{}
	}
	sel[CacheMountedLabel] = "true"
	return sel
}

// reconcileRelease undoes what wasme did for workloads no FilterDeployment selects any more:
// this FilterDeployment's EnvoyFilters of unselected workloads first (so no pod is left with a
// filter and no mount), then wasme's annotations on workloads no live FilterDeployment selects.
// It depends on neither the image nor the node caches, so a workload relabelled away is released
// even while those fail or wait.
func (r *FilterDeploymentReconciler) reconcileRelease(ctx context.Context, fd *wasmev1.FilterDeployment, ecdsLive bool) error {
	selected, err := r.selectedWorkloads(ctx, fd)
	if err != nil {
		var st *stallingError
		if !errors.As(err, &st) {
			return err
		}
		selected = nil // an invalid kind selects nothing
	}
	want := map[string]bool{}
	for _, w := range selected {
		want[envoyFilterName(fd, w)] = true
	}
	if err := r.deleteStaleEnvoyFilters(ctx, fd, want); err != nil {
		return err
	}
	var live *wasmev1.FilterDeployment
	if ecdsLive {
		live = fd
	}
	return r.releaseUnselected(ctx, fd.Namespace, nil, live)
}

// filterTemplate is the part of every workload's EnvoyFilter that depends on the
// FilterDeployment alone.
func (r *FilterDeploymentReconciler) filterTemplate(ctx context.Context, fd *wasmev1.FilterDeployment, p *pass) (istio.Filter, error) {
	spec := &fd.Spec.Filter
	ctxName, err := spec.EnvoyPatchContext()
	if err != nil {
		return istio.Filter{}, stalling(wasmev1.InvalidSpecReason, err)
	}
	cfg, _ := spec.DecodeConfig() // reconcileImage refused an undecodable config
	f := istio.Filter{
		Namespace: fd.Namespace, ID: fd.FilterID(), RootID: fd.Status.RootID,
		ModuleSHA256: strings.TrimPrefix(fd.Status.ModuleDigest, "sha256:"),
		Config:       cfg, Context: ctxName, Shape: p.shape, CacheDir: r.cacheDir(),
		Owner:      metav1.NewControllerRef(fd, wasmev1.GroupVersion.WithKind("FilterDeployment")),
		Placements: placements(spec.Match),
	}
	c := controls(fd, p)
	f.Phase, f.FailStrategy, f.FailurePolicy = c.Phase, c.FailStrategy, c.FailurePolicy
	if spec.VMConfig != nil {
		f.Env = spec.VMConfig.Env
	}
	if p.shape == istio.TypedShape {
		// Every FilterDeployment of the namespace counts, selecting the workload or not: the
		// order is one total order, so no pass needs to know which others share a workload.
		var list wasmev1.FilterDeploymentList
		if err := r.List(ctx, &list, client.InNamespace(fd.Namespace)); err != nil {
			return istio.Filter{}, fmt.Errorf("listing FilterDeployments: %w", err)
		}
		keys := make([]istio.ChainKey, 0, len(list.Items))
		for i := range list.Items {
			if o := &list.Items[i]; o.DeletionTimestamp.IsZero() || o.UID == fd.UID {
				keys = append(keys, chainKey(o))
			}
		}
		prio := istio.ChainPriority(chainKey(fd), keys)
		f.Priority = &prio
	}
	return f, nil
}

// controls is what of spec.filter an Istio version may not express (see istio.CheckControls).
func controls(fd *wasmev1.FilterDeployment, p *pass) istio.Filter {
	return istio.Filter{
		Phase: fd.Spec.Filter.Phase, FailStrategy: fd.Spec.Filter.FailStrategy,
		Shape: p.shape, FailurePolicy: !p.version.Less(istio.FailurePolicySince),
	}
}

func chainKey(fd *wasmev1.FilterDeployment) istio.ChainKey {
	return istio.ChainKey{Phase: cmp.Or(fd.Spec.Filter.Phase, wasmev1.PhaseUnspecified), Priority: ptr.Deref(fd.Spec.Filter.Priority, 0), Name: fd.Name}
}

// placements turns spec.filter.match into insertion points: one per direction and port.
func placements(match []wasmev1.TrafficSelector) []istio.Placement {
	var out []istio.Placement
	for _, m := range match {
		ctx := "ANY"
		switch m.Mode {
		case wasmev1.ModeServer:
			ctx = "SIDECAR_INBOUND"
		case wasmev1.ModeClient:
			ctx = "SIDECAR_OUTBOUND"
		}
		if len(m.Ports) == 0 {
			out = append(out, istio.Placement{Context: ctx})
		}
		for _, port := range m.Ports {
			out = append(out, istio.Placement{Context: ctx, Port: uint32(port)}) //nolint:gosec // G115: the schema bounds ports to 1-65535
		}
	}
	return out
}

// applied says what applyEnvoyFilter did: wrote the EnvoyFilter, or found it as wanted (and
// created then).
type applied struct {
	written bool
	created metav1.Time
}

// applyEnvoyFilter creates or updates the workload's EnvoyFilter, and writes nothing when it is
// already as wanted.
func (r *FilterDeploymentReconciler) applyEnvoyFilter(ctx context.Context, fd *wasmev1.FilterDeployment, f istio.Filter, w workload) (applied, error) {
	if errs := validation.IsDNS1123Subdomain(f.Name); len(errs) > 0 {
		return applied{}, fmt.Errorf("EnvoyFilter name %q: %s; use a shorter spec.filter.id", f.Name, strings.Join(errs, ", "))
	}
	build := istio.BuildEnvoyFilter
	if f.ModuleURL != "" {
		build = istio.BuildECDSEnvoyFilter
	}
	ef, err := build(f)
	if err != nil {
		return applied{}, err
	}
	ef.Annotations = map[string]string{WorkloadAnnotation: w.key()}

	var cur networkingv1alpha3.EnvoyFilter
	switch err := r.Get(ctx, client.ObjectKeyFromObject(ef), &cur); {
	case apierrors.IsNotFound(err):
	case err != nil:
		return applied{}, err
	default:
		if owner := metav1.GetControllerOf(&cur); owner == nil || owner.UID != fd.UID {
			return applied{}, fmt.Errorf("EnvoyFilter %s exists and is not this FilterDeployment's: give it another spec.filter.id", ef.Name)
		}
		if sameEnvoyFilter(&cur, ef) {
			return applied{created: cur.CreationTimestamp}, nil
		}
	}
	u, err := toUnstructured(ef)
	if err != nil {
		return applied{}, err
	}
	// Istio's generated apply configurations do not implement runtime.ApplyConfiguration, so the
	// EnvoyFilter goes through its unstructured form.
	if err := r.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(wasmev1.OperatorFieldManager), client.ForceOwnership); err != nil {
		return applied{}, fmt.Errorf("applying EnvoyFilter %s: %w", ef.Name, err)
	}
	return applied{written: true}, nil
}

func sameEnvoyFilter(cur, want *networkingv1alpha3.EnvoyFilter) bool {
	a, _ := json.Marshal(&cur.Spec)
	b, _ := json.Marshal(&want.Spec)
	return string(a) == string(b) && maps.Equal(cur.Labels, want.Labels) && cur.Annotations[WorkloadAnnotation] == want.Annotations[WorkloadAnnotation]
}

func toUnstructured(o client.Object) (*unstructured.Unstructured, error) {
	b, err := json.Marshal(o)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{}
	if err := json.Unmarshal(b, &u.Object); err != nil {
		return nil, err
	}
	unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(u.Object, "status")
	return u, nil
}

// deleteStaleEnvoyFilters removes this FilterDeployment's EnvoyFilters that no selected
// workload needs any more (workload relabelled or gone, id changed).
func (r *FilterDeploymentReconciler) deleteStaleEnvoyFilters(ctx context.Context, fd *wasmev1.FilterDeployment, want map[string]bool) error {
	var efs networkingv1alpha3.EnvoyFilterList
	if err := r.List(ctx, &efs, client.InNamespace(fd.Namespace)); err != nil {
		if envoyFilterAPIGone(err) {
			// No EnvoyFilter API, no EnvoyFilter left: deletion must not wait for Istio forever.
			return nil
		}
		return fmt.Errorf("listing EnvoyFilters: %w", err)
	}
	for _, ef := range efs.Items {
		if want[ef.Name] || !metav1.IsControlledBy(ef, fd) {
			continue
		}
		if err := r.Delete(ctx, ef); client.IgnoreNotFound(err) != nil && !envoyFilterAPIGone(err) {
			return fmt.Errorf("deleting stale EnvoyFilter %s: %w", ef.Name, err)
		}
	}
	return nil
}

// envoyFilterAPIGone tells whether err says Istio's EnvoyFilter API is not served (its CRD was
// removed, or never installed).
func envoyFilterAPIGone(err error) bool {
	return apimeta.IsNoMatchError(err) || discovery.IsGroupDiscoveryFailedError(err)
}

// patchWorkload merges the cache volume into the workload's sidecar annotations. The first
// time, the user's own values are recorded; later passes compute the same result and write
// nothing, so the pods roll once.
func (r *FilterDeploymentReconciler) patchWorkload(ctx context.Context, w workload) error {
	orig, err := originals(w)
	if err != nil {
		return err
	}
	want := map[string]string{}
	volume, mount := CacheVolumes(r.cacheDir())
	for key, ours := range map[string]string{UserVolumeAnnotation: volume, UserVolumeMountAnnotation: mount} {
		v, err := mergeVolumes(orig[key], ours)
		if err != nil {
			return fmt.Errorf("annotation %s: %w", key, err)
		}
		want[key] = v
	}
	recorded, _ := json.Marshal(orig)
	if w.annotations[OriginalAnnotation] == string(recorded) &&
		w.templateAnnotations[UserVolumeAnnotation] == want[UserVolumeAnnotation] &&
		w.templateAnnotations[UserVolumeMountAnnotation] == want[UserVolumeMountAnnotation] &&
		w.templateLabels[CacheMountedLabel] == "true" {
		return nil
	}
	return r.applyWorkload(ctx, w, map[string]string{OriginalAnnotation: string(recorded)}, want,
		map[string]string{CacheMountedLabel: "true"})
}

// CacheVolumes are the userVolume and userVolumeMount annotation values that mount the node
// cache directory dir into the sidecar, read-only, at the same path.
func CacheVolumes(dir string) (volume, mount string) {
	type hostPath struct {
		Path string `json:"path"`
	}
	v, _ := json.Marshal([]struct {
		Name     string   `json:"name"`
		HostPath hostPath `json:"hostPath"`
	}{{Name: "cache-dir", HostPath: hostPath{Path: dir}}})
	m, _ := json.Marshal([]struct {
		MountPath string `json:"mountPath"`
		Name      string `json:"name"`
		ReadOnly  bool   `json:"readOnly"`
	}{{MountPath: dir, Name: "cache-dir", ReadOnly: true}})
	return string(v), string(m)
}

// releaseWorkload undoes patchWorkload: it applies the recorded user values alone, which
// drops every field wasme owned and leaves the user's annotations as they were.
func (r *FilterDeploymentReconciler) releaseWorkload(ctx context.Context, w workload) error {
	orig, err := originals(w)
	if err != nil {
		return err
	}
	return r.applyWorkload(ctx, w, nil, orig, nil)
}

// originals are the user's values of the sidecar annotations: as recorded, or, on a workload
// wasme has not patched, as they are now.
func originals(w workload) (map[string]string, error) {
	orig := map[string]string{}
	if rec, ok := w.annotations[OriginalAnnotation]; ok {
		if err := json.Unmarshal([]byte(rec), &orig); err != nil {
			return nil, fmt.Errorf("annotation %s is not a JSON object of strings: %w", OriginalAnnotation, err)
		}
		return orig, nil
	}
	for _, k := range []string{UserVolumeAnnotation, UserVolumeMountAnnotation} {
		if v, ok := w.templateAnnotations[k]; ok {
			orig[k] = v
		}
	}
	return orig, nil
}

// mergeVolumes adds wasme's entry to a user's JSON list of volumes (or mounts). An entry of
// the user's with the same name must be identical, or sidecar injection would get two
// different "cache-dir"s.
func mergeVolumes(user, ours string) (string, error) {
	if strings.TrimSpace(user) == "" {
		return ours, nil
	}
	var list []json.RawMessage
	if err := json.Unmarshal([]byte(user), &list); err != nil {
		return "", fmt.Errorf("the workload's value is not a JSON list: %w", err)
	}
	// ours is one entry, as CacheVolumes makes it.
	var mineRaw []json.RawMessage
	var mine map[string]any
	if err := json.Unmarshal([]byte(ours), &mineRaw); err != nil || len(mineRaw) != 1 {
		return "", fmt.Errorf("wasme's own value %q is not a JSON list of one entry", ours)
	}
	if err := json.Unmarshal(mineRaw[0], &mine); err != nil {
		return "", fmt.Errorf("wasme's own value %q is not a JSON list of one object: %w", ours, err)
	}
	for _, raw := range list {
		var entry map[string]any
		if err := json.Unmarshal(raw, &entry); err != nil {
			return "", fmt.Errorf("the workload's value is not a JSON list of objects: %w", err)
		}
		if entry["name"] == mine["name"] {
			if reflect.DeepEqual(entry, mine) {
				return user, nil
			}
			return "", fmt.Errorf("the workload already has a different entry named %v", entry["name"])
		}
	}
	list = append(list, mineRaw[0])
	b, err := json.Marshal(list)
	return string(b), err
}

// applyWorkload server-side applies exactly these annotations as wasme's, on the workload's
// metadata and on its pod template, and these labels on its pod template; annotations and
// labels wasme applied before and left out are removed.
func (r *FilterDeploymentReconciler) applyWorkload(ctx context.Context, w workload, meta, template, templateLabels map[string]string) error {
	tmpl := corev1ac.PodTemplateSpec()
	if len(template) > 0 {
		tmpl.WithAnnotations(template)
	}
	if len(templateLabels) > 0 {
		tmpl.WithLabels(templateLabels)
	}
	var ac runtime.ApplyConfiguration
	switch w.kind {
	case "Deployment":
		ac = appsv1ac.Deployment(w.name, w.namespace).WithAnnotations(meta).WithSpec(appsv1ac.DeploymentSpec().WithTemplate(tmpl))
	case "DaemonSet":
		ac = appsv1ac.DaemonSet(w.name, w.namespace).WithAnnotations(meta).WithSpec(appsv1ac.DaemonSetSpec().WithTemplate(tmpl))
	case "StatefulSet":
		ac = appsv1ac.StatefulSet(w.name, w.namespace).WithAnnotations(meta).WithSpec(appsv1ac.StatefulSetSpec().WithTemplate(tmpl))
	default:
		return fmt.Errorf("unknown workload kind %q", w.kind)
	}
	if err := r.Apply(ctx, ac, client.FieldOwner(wasmev1.OperatorFieldManager), client.ForceOwnership); err != nil {
		return fmt.Errorf("patching %s %s: %w", w.kind, w.name, err)
	}
	return nil
}

// releaseUnselected restores every workload of the namespace that wasme patched and that no
// live FilterDeployment selects any more (relabelled, kind changed, FilterDeployment deleted)
// or that only ECDS FilterDeployments select now. except is a FilterDeployment being deleted,
// which no longer counts; ecdsLive, when set, has just written its ECDS EnvoyFilters.
func (r *FilterDeploymentReconciler) releaseUnselected(ctx context.Context, ns string, except, ecdsLive *wasmev1.FilterDeployment) error {
	var fds wasmev1.FilterDeploymentList
	if err := r.List(ctx, &fds, client.InNamespace(ns)); err != nil {
		return fmt.Errorf("listing FilterDeployments: %w", err)
	}
	var errs []error
	for _, kind := range []string{"Deployment", "DaemonSet", "StatefulSet"} {
		ws, err := r.listWorkloads(ctx, ns, kind)
		if err != nil {
			return fmt.Errorf("listing %ss: %w", kind, err)
		}
		for _, w := range ws {
			if _, patched := w.annotations[OriginalAnnotation]; !patched || mountedByAny(fds.Items, w, except, ecdsLive) {
				continue
			}
			errs = append(errs, r.releaseWorkload(ctx, w))
		}
	}
	return errors.Join(errs...)
}

// mountedByAny tells whether a live FilterDeployment still needs w's cache mount: it selects
// w and is not in ECDS delivery yet. One switching to ECDS keeps the mount until its ECDS
// EnvoyFilters are written (this pass's ecdsLive, or a Ready status in ECDS for the others), so
// the pods never roll into a window without the filter.
func mountedByAny(fds []wasmev1.FilterDeployment, w workload, except, ecdsLive *wasmev1.FilterDeployment) bool {
	for i := range fds {
		fd := &fds[i]
		if (except != nil && fd.UID == except.UID) || !fd.DeletionTimestamp.IsZero() || !selects(fd, w) {
			continue
		}
		if ecdsLive != nil && fd.UID == ecdsLive.UID {
			continue
		}
		if fd.Spec.Delivery == wasmev1.DeliveryECDS && fd.Status.Delivery == wasmev1.DeliveryECDS &&
			fd.Status.ObservedGeneration == fd.Generation && apimeta.IsStatusConditionTrue(fd.Status.Conditions, wasmev1.ReadyCondition) {
			continue
		}
		return true
	}
	return false
}

// reconcileDelete removes the FilterDeployment's EnvoyFilters and, from workloads no other
// FilterDeployment selects, wasme's annotations; then it lets the object go.
func (r *FilterDeploymentReconciler) reconcileDelete(ctx context.Context, fd *wasmev1.FilterDeployment) error {
	if !controllerutil.ContainsFinalizer(fd, wasmev1.Finalizer) {
		return nil
	}
	if err := r.deleteStaleEnvoyFilters(ctx, fd, nil); err != nil {
		return err
	}
	if err := r.releaseUnselected(ctx, fd.Namespace, fd, nil); err != nil {
		return err
	}
	patch := client.MergeFrom(fd.DeepCopy())
	controllerutil.RemoveFinalizer(fd, wasmev1.Finalizer)
	if err := r.Patch(ctx, fd, patch); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("removing finalizer: %w", err)
	}
	r.metrics.forget(fd)
	return nil
}
