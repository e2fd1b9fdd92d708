package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"wasme.io/wasme/internal/imagebuild"
)

// DNSServiceIP is the cluster IP of the kube-dns Service (CoreDNS), kubelet's clusterDNS: a
// fixed address of ServiceCIDR, as kubeadm gives the tenth address of its range.
const DNSServiceIP = "10.253.0.10"

// ClusterDomain is kubelet's clusterDomain and the zone CoreDNS serves.
const ClusterDomain = "cluster.local"

// dns runs CoreDNS (the pinned build of hack/tools/coredns) in kube-system as a Deployment
// behind the kube-dns Service at DNSServiceIP, and waits until it is Ready, so that pods
// created after Start resolve Service names (details.bookinfo, istiod.istio-system.svc).
func (n *Node) dns(ctx context.Context) error {
	data, err := os.ReadFile(n.corednsBin)
	if err != nil {
		return err
	}
	img, err := ImageOf("coredns", data, []string{"-conf", "/etc/coredns/Corefile"})
	if err != nil {
		return err
	}
	pushed, err := imagebuild.PushImage(ctx, n.Registry.Host+"/coredns:wasme", img, true)
	if err != nil {
		return err
	}
	manifest := n.path("addons", "coredns.yaml")
	if err := os.MkdirAll(filepath.Dir(manifest), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(manifest, fmt.Appendf(nil, corednsManifest, ClusterDomain, n.NodeRef(pushed), DNSServiceIP), 0o644); err != nil {
		return err
	}
	if _, err := n.Kubectl(ctx, "apply", "--server-side", "-f", manifest); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	_, err = n.Kubectl(ctx, "-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=3m")
	return err
}

// corednsManifest is CoreDNS as Kubernetes' own addon deploys it, fitted to the test node:
// CoreDNS listens on 1053 as the nonroot user (binding 53 needs CAP_NET_BIND_SERVICE, which a
// non-root process only gets from a file capability the image would have to carry) and the
// kube-dns Service maps 53 to it. The node is offline: instead of a forward plugin to an
// upstream resolver, every name outside the cluster domain is answered NXDOMAIN, as an upstream
// would answer for names that do not exist (a server with no zone for them would refuse, which
// resolvers report as a misbehaving server).
const corednsManifest = `apiVersion: v1
kind: ServiceAccount
metadata:
  name: coredns
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:coredns
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:coredns
subjects:
- kind: ServiceAccount
  name: coredns
  namespace: kube-system
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: coredns
  namespace: kube-system
data:
  Corefile: |
    %[1]s:1053 in-addr.arpa:1053 ip6.arpa:1053 {
        errors
        health :8080
        ready :8181
        kubernetes %[1]s in-addr.arpa ip6.arpa {
            pods insecure
            ttl 30
        }
        cache 30
        loadbalance
    }
    .:1053 {
        errors
        template ANY ANY {
            rcode NXDOMAIN
        }
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  replicas: 1
  selector:
    matchLabels: {k8s-app: kube-dns}
  template:
    metadata:
      labels: {k8s-app: kube-dns}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      # CoreDNS cannot resolve through itself.
      dnsPolicy: Default
      containers:
      - name: coredns
        image: %[2]s
        ports:
        - {name: dns, containerPort: 1053, protocol: UDP}
        - {name: dns-tcp, containerPort: 1053, protocol: TCP}
        resources:
          requests: {cpu: 10m, memory: 30Mi}
          limits: {memory: 170Mi}
        securityContext:
          runAsNonRoot: true
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
        volumeMounts:
        - {name: config, mountPath: /etc/coredns, readOnly: true}
        livenessProbe:
          httpGet: {path: /health, port: 8080}
          periodSeconds: 10
          failureThreshold: 5
        readinessProbe:
          httpGet: {path: /ready, port: 8181}
          periodSeconds: 1
      volumes:
      - name: config
        configMap: {name: coredns}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  selector: {k8s-app: kube-dns}
  clusterIP: %[3]s
  ports:
  - {name: dns, port: 53, targetPort: 1053, protocol: UDP}
  - {name: dns-tcp, port: 53, targetPort: 1053, protocol: TCP}
`
