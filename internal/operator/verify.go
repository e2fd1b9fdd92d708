package operator

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/signing"
	"wasme.io/wasme/pkg/wasmimage"
)

// SignatureVerifier checks an image's signature in its registry; RegistryImages in
// production.
type SignatureVerifier interface {
	// Verify looks for a signature of ref (pinned to a manifest digest) that verifies under p.
	Verify(ctx context.Context, ref string, opts PullOptions, p signing.Policy) (*signing.Verified, error)
}

// requirement is one demand for a signature: spec.filter.verify or a FilterPolicy.
type requirement struct {
	by   string
	keys []signing.PublicKey
}

// applicablePolicies returns the FilterPolicies whose namespace selector matches namespace,
// by name. Namespaces are read when a FilterDeployment is reconciled (not watched), as for
// the insecure-registries label.
func (r *FilterDeploymentReconciler) applicablePolicies(ctx context.Context, namespace string) ([]wasmev1.FilterPolicy, error) {
	var list wasmev1.FilterPolicyList
	if err := r.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("listing FilterPolicies: %w", err)
	}
	if len(list.Items) == 0 {
		return nil, nil
	}
	var ns corev1.Namespace
	if err := r.APIReader.Get(ctx, client.ObjectKey{Name: namespace}, &ns); err != nil {
		return nil, fmt.Errorf("reading namespace %s for the FilterPolicies' selectors: %w", namespace, err)
	}
	var out []wasmev1.FilterPolicy
	for _, p := range list.Items {
		sel := labels.Everything()
		if p.Spec.NamespaceSelector != nil {
			s, err := metav1.LabelSelectorAsSelector(p.Spec.NamespaceSelector)
			if err != nil {
				// The policy is broken: failing closed keeps its namespaces' images out.
				return nil, fmt.Errorf("FilterPolicy %s has an invalid namespaceSelector: %w", p.Name, err)
			}
			sel = s
		}
		if sel.Matches(labels.Set(ns.Labels)) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b wasmev1.FilterPolicy) int { return cmp.Compare(a.Name, b.Name) })
	return out, nil
}

// registryAllowed says whether ref is in one of a policy's allowed registries: a host[:port]
// entry allows that registry, a host/path entry that repository and those under it.
func registryAllowed(ref wasmimage.Reference, allowed []string) bool {
	if len(allowed) == 0 {
		return true
	}
	for _, a := range allowed {
		host, path, _ := strings.Cut(a, "/")
		if !strings.EqualFold(host, ref.Registry) {
			continue
		}
		if path == "" || ref.Repository == path || strings.HasPrefix(ref.Repository, path+"/") {
			return true
		}
	}
	return false
}

// requirements gathers the signatures the FilterDeployment needs, reading the keys. A key
// source that is missing or malformed is the spec's (or the admin's) to fix: stalling.
func (r *FilterDeploymentReconciler) requirements(ctx context.Context, fd *wasmev1.FilterDeployment, policies []wasmev1.FilterPolicy) ([]requirement, error) {
	var reqs []requirement
	if v := fd.Spec.Filter.Verify; v != nil {
		req, err := r.readKeys(ctx, fd.Namespace, v.Keys, "spec.filter.verify")
		if err != nil {
			return nil, err
		}
		reqs = append(reqs, req)
	}
	for _, p := range policies {
		if len(p.Spec.RequiredKeys) == 0 {
			continue
		}
		req, err := r.readKeys(ctx, r.policyNamespace(), p.Spec.RequiredKeys, "FilterPolicy/"+p.Name)
		if err != nil {
			return nil, err
		}
		reqs = append(reqs, req)
	}
	return reqs, nil
}

func (r *FilterDeploymentReconciler) policyNamespace() string {
	return cmp.Or(r.PolicyNamespace, "wasme")
}

// readKeys reads and parses the public keys of refs from namespace, uncached (the watches
// see only metadata): a rotated key is used at the pass its change brings.
func (r *FilterDeploymentReconciler) readKeys(ctx context.Context, namespace string, refs []wasmev1.KeyReference, by string) (requirement, error) {
	req := requirement{by: by}
	for _, k := range refs {
		key := cmp.Or(k.Key, wasmev1.DefaultPublicKeyKey)
		var data []byte
		switch k.Kind {
		case "Secret":
			var s corev1.Secret
			if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: namespace, Name: k.Name}, &s); err != nil {
				return req, keyReadError(by, "Secret", namespace, k.Name, err)
			}
			data = s.Data[key]
		case "ConfigMap":
			var c corev1.ConfigMap
			if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: namespace, Name: k.Name}, &c); err != nil {
				return req, keyReadError(by, "ConfigMap", namespace, k.Name, err)
			}
			data = []byte(c.Data[key])
			if len(data) == 0 {
				data = c.BinaryData[key]
			}
		default:
			return req, stalling(wasmev1.InvalidSpecReason, fmt.Errorf("%s: key kind %q is neither Secret nor ConfigMap", by, k.Kind))
		}
		if len(data) == 0 {
			return req, stalling(wasmev1.VerificationFailedReason, fmt.Errorf("%s: %s %s/%s has no key %q", by, k.Kind, namespace, k.Name, key))
		}
		keys, err := signing.ParsePublicKeys(data)
		if err != nil {
			return req, stalling(wasmev1.VerificationFailedReason, fmt.Errorf("%s: %s %s/%s key %q: %w", by, k.Kind, namespace, k.Name, key, err))
		}
		req.keys = append(req.keys, keys...)
	}
	return req, nil
}

func keyReadError(by, kind, namespace, name string, err error) error {
	if apierrors.IsNotFound(err) {
		return stalling(wasmev1.VerificationFailedReason, fmt.Errorf("%s: %s %q not found in namespace %s", by, kind, name, namespace))
	}
	return fmt.Errorf("%s: reading %s %s/%s: %w", by, kind, namespace, name, err)
}

// verifySignatures checks every requirement against the manifest digest the reference
// resolved to, before anything is pulled: the digest verified is the digest fetched and
// deployed, whatever the tag does meanwhile. A success is remembered per image, digest,
// credentials and key set, so steady passes ask the registry nothing; a failure is not.
func (r *FilterDeploymentReconciler) verifySignatures(ctx context.Context, ref wasmimage.Reference, digest string, opts PullOptions, reqs []requirement) (*wasmev1.VerifiedSignature, error) {
	v := r.Signatures
	if v == nil {
		v, _ = r.Images.(SignatureVerifier)
	}
	if v == nil {
		return nil, stalling(wasmev1.VerificationFailedReason, errors.New("a signature is required but this operator has no signature verifier"))
	}
	out := &wasmev1.VerifiedSignature{Digest: digest}
	pinned := ref.Name() + "@" + digest
	for _, req := range reqs {
		key := pinned + "|" + opts.identity() + "|" + keySetID(req.keys)
		signer, ok := r.verified.get(key)
		if !ok {
			res, err := v.Verify(ctx, pinned, opts, signing.Policy{Keys: req.keys})
			if err != nil {
				if errors.Is(err, signing.ErrUnsigned) || errors.Is(err, signing.ErrNotVerified) {
					return nil, stalling(wasmev1.VerificationFailedReason, fmt.Errorf("%s requires a signature: %w", req.by, err))
				}
				return nil, failed(wasmev1.ImageFailedReason, fmt.Errorf("verifying the signature of %s: %w", pinned, err))
			}
			if res.Digest.String() != digest {
				return nil, stalling(wasmev1.VerificationFailedReason, fmt.Errorf("%s: the signature verified covers %s, not %s", req.by, res.Digest, digest))
			}
			signer = res.Signer
			r.verified.put(key, signer)
		}
		if !slices.Contains(out.Signers, signer) {
			out.Signers = append(out.Signers, signer)
		}
		out.RequiredBy = append(out.RequiredBy, req.by)
	}
	return out, nil
}

// keySetID names a set of keys independent of order.
func keySetID(keys []signing.PublicKey) string {
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = k.ID
	}
	slices.Sort(ids)
	sum := sha256.Sum256([]byte(strings.Join(ids, ",")))
	return hex.EncodeToString(sum[:])
}

// verifiedCache remembers successful verifications, bounded: when full it starts over, which
// costs one registry round per image.
type verifiedCache struct {
	mu sync.Mutex
	m  map[string]string
}

const maxVerified = 1024

func (c *verifiedCache) get(key string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.m[key]
	return s, ok
}

func (c *verifiedCache) put(key, signer string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxVerified {
		c.m = map[string]string{}
	}
	c.m[key] = signer
}

// Verify implements SignatureVerifier against the registry, with the FilterDeployment's own
// pull options and the egress policy.
func (s RegistryImages) Verify(ctx context.Context, ref string, o PullOptions, p signing.Policy) (*signing.Verified, error) {
	repo, desc, err := wasmimage.ResolveDescriptor(ctx, ref, s.options(o)...)
	if err != nil {
		return nil, s.public(ref, err)
	}
	v, err := signing.Verify(ctx, repo, desc, p)
	if err != nil {
		if errors.Is(err, signing.ErrUnsigned) || errors.Is(err, signing.ErrNotVerified) {
			return nil, err
		}
		return nil, s.public(ref, err)
	}
	return v, nil
}

// filterDeploymentsForPolicy: a FilterPolicy change may concern any namespace.
func (r *FilterDeploymentReconciler) allFilterDeployments(ctx context.Context, _ client.Object) []reconcile.Request {
	var list wasmev1.FilterDeploymentList
	if err := r.List(ctx, &list); err != nil {
		return nil
	}
	out := make([]reconcile.Request, 0, len(list.Items))
	for _, fd := range list.Items {
		out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&fd)})
	}
	return out
}

// filterDeploymentsForKeys maps a change of a ConfigMap or Secret (kind) to the
// FilterDeployments that read keys from it: those of its namespace naming it in
// spec.filter.verify, and, in the operator's namespace, every FilterDeployment when a policy
// names it (a policy's keys may concern any). The watch sees metadata only: which object
// changed, never its data, so the cache holds no Secret's content; the pass reads the value.
func (r *FilterDeploymentReconciler) filterDeploymentsForKeys(kind string) handler.MapFunc {
	return func(ctx context.Context, o client.Object) []reconcile.Request {
		names := func(refs []wasmev1.KeyReference) bool {
			return slices.ContainsFunc(refs, func(k wasmev1.KeyReference) bool { return k.Kind == kind && k.Name == o.GetName() })
		}
		if o.GetNamespace() == r.policyNamespace() {
			var policies wasmev1.FilterPolicyList
			if err := r.List(ctx, &policies); err == nil {
				for _, p := range policies.Items {
					if names(p.Spec.RequiredKeys) {
						return r.allFilterDeployments(ctx, o)
					}
				}
			}
		}
		var list wasmev1.FilterDeploymentList
		if err := r.List(ctx, &list, client.InNamespace(o.GetNamespace())); err != nil {
			return nil
		}
		var out []reconcile.Request
		for _, fd := range list.Items {
			if v := fd.Spec.Filter.Verify; v != nil && names(v.Keys) {
				out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&fd)})
			}
		}
		return out
	}
}
