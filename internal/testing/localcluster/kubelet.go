package localcluster

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"maps"
	"net/netip"
	"sort"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// kubelet stands in for the ReplicaSet and DaemonSet controllers and the kubelet: every
// Deployment gets one Pod, every DaemonSet one Pod per node, each Running and Ready with its
// own loopback IP. When a pod template's labels or annotations change (as when the operator
// adds the sidecar volume annotations), the Pod's metadata is updated in place. A real cluster
// would replace the Pod; keeping it lets the test proxy, which stands for that pod's sidecar,
// keep its identity. Nothing reads those annotations here except people and tests (they are for
// Istio's injector, which does not run).
type kubelet struct {
	c      client.Client
	nodes  []string
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	nextIP netip.Addr
	errs   []error
}

// podIPBase is the first pod IP. 127.0.0.0/8 is all loopback on Linux, so a test proxy can
// listen on its pod's IP.
var podIPBase = netip.MustParseAddr("127.0.10.1")

func startKubelet(ctx context.Context, c client.Client, nodes []string) *kubelet {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	k := &kubelet{c: c, nodes: nodes, cancel: cancel, done: make(chan struct{}), nextIP: podIPBase}
	go func() {
		defer close(k.done)
		k.loop(ctx)
	}()
	return k
}

func (k *kubelet) stop() {
	k.cancel()
	<-k.done
}

// loop syncs on a short period. A watch would be quicker to react but needs relisting on every
// expiry; at a handful of workloads a 100 ms list is cheap, and it cannot miss an event.
func (k *kubelet) loop(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		k.syncAll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sync runs one pass now (tests call it to not wait for the next tick).
func (k *kubelet) syncAll(ctx context.Context) {
	var deps appsv1.DeploymentList
	if err := k.c.List(ctx, &deps); err == nil {
		for i := range deps.Items {
			d := &deps.Items[i]
			k.record(k.syncPod(ctx, d.Namespace, d.Name, "Deployment", d.Spec.Template, k.nodes[i%len(k.nodes)]))
		}
	}
	var dss appsv1.DaemonSetList
	if err := k.c.List(ctx, &dss); err == nil {
		for i := range dss.Items {
			ds := &dss.Items[i]
			for _, n := range k.nodes {
				k.record(k.syncPod(ctx, ds.Namespace, ds.Name+"-"+n, "DaemonSet", ds.Spec.Template, n))
			}
		}
	}
}

func (k *kubelet) record(err error) {
	if err == nil || apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.errs) < 10 {
		k.errs = append(k.errs, err)
	}
}

// podLabel ties a Pod to the workload it was made for (like pod-template-hash does).
const podLabel = "wasme.io/local-workload"

// syncPod makes sure the workload (key) has a Pod from template on node.
func (k *kubelet) syncPod(ctx context.Context, ns, key, kind string, tmpl corev1.PodTemplateSpec, node string) error {
	var pods corev1.PodList
	if err := k.c.List(ctx, &pods, client.InNamespace(ns), client.MatchingLabels{podLabel: key}); err != nil {
		return err
	}
	labels := maps.Clone(tmpl.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[podLabel] = key
	var p *corev1.Pod
	if len(pods.Items) > 0 {
		p = &pods.Items[0]
		if !maps.Equal(p.Labels, labels) || !maps.Equal(p.Annotations, tmpl.Annotations) {
			p.Labels, p.Annotations = labels, tmpl.Annotations
			if err := k.c.Update(ctx, p); err != nil {
				return err
			}
		}
		if p.Status.PodIP != "" {
			return nil
		}
	} else {
		spec := *tmpl.Spec.DeepCopy()
		spec.NodeName = node
		// No token controller runs to mint the projected token, and nothing in the pod runs.
		no := false
		spec.AutomountServiceAccountToken = &no
		if spec.ServiceAccountName == "" {
			spec.ServiceAccountName = "default"
		}
		if err := k.c.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: spec.ServiceAccountName}}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
		name := fmt.Sprintf("%s-%s-%s", key, templateHash(tmpl), rand.String(5))
		if kind == "DaemonSet" {
			name = fmt.Sprintf("%s-%s", key[:len(key)-len(node)-1], rand.String(5))
		}
		p = &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels, Annotations: tmpl.Annotations},
			Spec:       spec,
		}
		if err := k.c.Create(ctx, p); err != nil {
			return err
		}
	}
	k.mu.Lock()
	ip := k.nextIP
	k.nextIP = k.nextIP.Next()
	k.mu.Unlock()
	now := metav1.Now()
	p.Status = corev1.PodStatus{
		Phase:     corev1.PodRunning,
		HostIP:    "127.0.0.1",
		HostIPs:   []corev1.HostIP{{IP: "127.0.0.1"}},
		PodIP:     ip.String(),
		PodIPs:    []corev1.PodIP{{IP: ip.String()}},
		StartTime: &now,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
	}
	for _, ctr := range p.Spec.Containers {
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{
			Name: ctr.Name, Image: ctr.Image, Ready: true, Started: &[]bool{true}[0],
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
	return k.c.Status().Update(ctx, p)
}

func templateHash(t corev1.PodTemplateSpec) string {
	b, _ := json.Marshal(t.Spec)
	h := fnv.New32a()
	_, _ = h.Write(b)
	return rand.SafeEncodeString(fmt.Sprint(h.Sum32()))[:9]
}

// errors returns what went wrong while syncing pods, at most ten.
func (k *kubelet) errors() []error {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := append([]error(nil), k.errs...)
	sort.Slice(out, func(i, j int) bool { return out[i].Error() < out[j].Error() })
	return out
}
