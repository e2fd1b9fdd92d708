package operator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/validation"
	"wasme.io/wasme/pkg/wasmimage"
)

// reconcileImage resolves the image to a digest, pulls it once per digest, validates the module
// with this FilterDeployment's root id and config, and hands it to the node caches' source.
func (r *FilterDeploymentReconciler) reconcileImage(ctx context.Context, fd *wasmev1.FilterDeployment, _ *pass) (stepResult, error) {
	cfg, err := fd.Spec.Filter.DecodeConfig()
	if err != nil {
		return stepResult{}, stalling(wasmev1.InvalidSpecReason, err)
	}
	opts, err := r.pullOptions(ctx, fd)
	if err != nil {
		// The Secret watch maps only key Secrets to their FilterDeployments: look again soon.
		return stepResult{}, waiting(wasmev1.ImageFailedReason, 30*time.Second, err)
	}
	// Statuses name the image as the spec does; cache keys use the parsed reference.
	image := fd.Spec.Filter.Image
	ref, err := wasmimage.ParseReference(image)
	if err != nil {
		return stepResult{}, stalling(wasmev1.InvalidSpecReason, err)
	}
	// An unpinned tag is resolved again after ResolveInterval, so a re-pushed tag rolls out
	// (also after a rejected module: the fix may be a new push).
	var res stepResult
	if ref.Digest == "" {
		res.requeueAfter = r.ResolveInterval
	}

	// FilterPolicies: the registry is checked before any connection, the signatures once the
	// digest is known and before the module is pulled, so a refused module is never stored
	// nor served.
	policies, err := r.applicablePolicies(ctx, fd.Namespace)
	if err != nil {
		return res, failed(wasmev1.PolicyDeniedReason, err)
	}
	for _, p := range policies {
		if !registryAllowed(ref, p.Spec.AllowedRegistries) {
			return res, stalling(wasmev1.PolicyDeniedReason, fmt.Errorf("image %s: FilterPolicy %s allows only the registries %s",
				image, p.Name, strings.Join(p.Spec.AllowedRegistries, ", ")))
		}
	}
	reqs, err := r.requirements(ctx, fd, policies)
	if err != nil {
		return res, err
	}

	digest, err := r.resolve(ctx, fd, ref, opts)
	if err != nil {
		return res, failed(wasmev1.ImageFailedReason, fmt.Errorf("resolving image %s: %w", image, err))
	}
	var verified *wasmev1.VerifiedSignature
	if len(reqs) > 0 {
		if verified, err = r.verifySignatures(ctx, ref, digest, opts, reqs); err != nil {
			// A signature pushed later is seen at the next resolve interval.
			return res.merge(stepResult{requeueAfter: r.ResolveInterval}), fmt.Errorf("image %s (%s): %w", image, digest, err)
		}
	}
	img, err := r.fetch(ctx, ref, digest, opts)
	if err != nil {
		return res, failed(wasmev1.ImageFailedReason, fmt.Errorf("pulling image %s: %w", image, err))
	}
	rootID := fd.Spec.Filter.RootID
	if rootID == "" {
		if len(img.RootIDs) == 0 {
			return res, stalling(wasmev1.InvalidSpecReason, fmt.Errorf("image %s declares no root id: set spec.filter.rootID", image))
		}
		rootID = img.RootIDs[0]
	}
	if err := r.validate(ctx, img, rootID, cfg.Value); err != nil {
		var le *validation.LimitError
		if errors.As(err, &le) && le.Transient() {
			// Out of time may be the machine's load: try again later, not at once (a hostile
			// module costs a validation budget each time).
			return res, waiting(wasmev1.ImageFailedReason, r.ResolveInterval, fmt.Errorf("module of %s rejected: %w", image, err))
		}
		return res, stalling(wasmev1.ImageFailedReason, fmt.Errorf("module of %s rejected: %w", image, err))
	}
	fd.Status.ImageDigest = img.ManifestDigest
	fd.Status.VerifiedSignature = verified
	fd.Status.ModuleDigest = img.ModuleDigest
	fd.Status.RootID = rootID
	return res, nil
}

// resolve returns the manifest digest of ref: the pinned one, or the tag's, asking the
// registry at most once per ResolveInterval (or when the spec changed) so watch-driven passes
// cost the registry nothing.
func (r *FilterDeploymentReconciler) resolve(ctx context.Context, fd *wasmev1.FilterDeployment, ref wasmimage.Reference, opts PullOptions) (string, error) {
	if ref.Digest != "" {
		return ref.Digest.String(), nil
	}
	key := fmt.Sprintf("%s/%s/%d/%s", fd.Namespace, fd.Name, fd.Generation, ref)
	if d, ok := r.images.resolved(key, r.ResolveInterval); ok {
		return d, nil
	}
	d, err := r.Images.Resolve(ctx, ref.String(), opts)
	if err != nil {
		return "", err
	}
	r.images.setResolved(key, d)
	// The registry just showed these credentials the repository's manifest.
	r.images.setVerified(ref.Name()+"@"+d, opts.identity())
	return d, nil
}

// fetch pulls the image pinned to digest, once per registry, repository and digest, into the
// module store; the image cache keeps what the image says (digests, root ids), the store its
// module's bytes. A module the store has dropped is pulled again. An image pulled with other
// credentials is handed out only once the registry accepted these ones for the same manifest
// (a HEAD), so one tenant's private module never reaches another tenant that merely knows its
// digest; the check is remembered for ResolveInterval.
func (r *FilterDeploymentReconciler) fetch(ctx context.Context, ref wasmimage.Reference, digest string, opts PullOptions) (*Image, error) {
	key, id := ref.Name()+"@"+digest, opts.identity()
	if img, ok := r.images.get(key); ok {
		if module, ok := r.Modules.Get(img.ModuleDigest); ok {
			if !r.images.isVerified(key, id, r.ResolveInterval) {
				if _, err := r.Images.Resolve(ctx, key, opts); err != nil {
					return nil, err
				}
				r.images.setVerified(key, id)
			}
			with := *img
			with.Module = module
			return &with, nil
		}
	}
	// Concurrent passes of FilterDeployments sharing an image and credentials pull it once.
	v, err, _ := r.images.pulls.Do(key+"|"+id, func() (any, error) {
		img, err := r.Images.Fetch(ctx, key, opts)
		mPulls.WithLabelValues(pullResult(err)).Inc()
		if err != nil {
			return nil, err
		}
		if img.ManifestDigest != digest {
			return nil, fmt.Errorf("registry returned manifest %s for %s", img.ManifestDigest, digest)
		}
		if err := r.Modules.Put(img.ModuleDigest, img.Module); err != nil {
			return nil, fmt.Errorf("keeping the module: %w", err)
		}
		meta := *img
		meta.Module = nil
		r.images.put(key, &meta)
		r.images.setVerified(key, id)
		return img, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*Image), nil
}

// validate runs the module once per (module, root id, config).
func (r *FilterDeploymentReconciler) validate(ctx context.Context, img *Image, rootID string, config []byte) error {
	if r.Validate == nil {
		return nil
	}
	sum := sha256.Sum256(config)
	key := img.ModuleDigest + "/" + rootID + "/" + hex.EncodeToString(sum[:])
	if res, ok := r.images.validated(key); ok {
		return res.err
	}
	// One validation at a time per key: concurrent passes of FilterDeployments sharing a
	// module would otherwise each compile it (make bench: peak RSS doubled).
	_, err, _ := r.images.checksInFlight.Do(key, func() (any, error) {
		start := time.Now()
		err := r.Validate(ctx, img.Module, rootID, config)
		mValidation.WithLabelValues(validationResult(err)).Observe(time.Since(start).Seconds())
		var le *validation.LimitError
		if !errors.As(err, &le) || !le.Transient() {
			r.images.setValidated(key, err)
		}
		return nil, err
	})
	return err
}

// pullOptions reads spec.filter.imagePullOptions and its Secret, from this namespace only.
func (r *FilterDeploymentReconciler) pullOptions(ctx context.Context, fd *wasmev1.FilterDeployment) (PullOptions, error) {
	o := fd.Spec.Filter.ImagePullOptions
	if o == nil {
		return PullOptions{}, nil
	}
	opts := PullOptions{PlainHTTP: o.PlainHTTP, InsecureSkipVerify: o.InsecureSkipVerify}
	if err := r.insecureAllowed(ctx, fd.Namespace, o); err != nil {
		return opts, err
	}
	if o.PullSecret == "" {
		return opts, nil
	}
	var s corev1.Secret
	if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: fd.Namespace, Name: o.PullSecret}, &s); err != nil {
		if apierrors.IsNotFound(err) {
			return opts, fmt.Errorf("pull secret %q not found in namespace %s", o.PullSecret, fd.Namespace)
		}
		return opts, fmt.Errorf("reading pull secret %q: %w", o.PullSecret, err)
	}
	switch {
	case len(s.Data[corev1.DockerConfigJsonKey]) > 0:
		opts.DockerConfigJSON = s.Data[corev1.DockerConfigJsonKey]
	case len(s.Data["username"]) > 0 && len(s.Data["password"]) > 0:
		opts.Username, opts.Password = string(s.Data["username"]), string(s.Data["password"])
	default:
		return opts, fmt.Errorf("pull secret %q has neither %s nor username and password", o.PullSecret, corev1.DockerConfigJsonKey)
	}
	return opts, nil
}

// AllowInsecureRegistriesLabel on a namespace (value "true") lets its FilterDeployments use
// imagePullOptions.plainHttp and insecureSkipVerify. Only who may update namespaces (an admin)
// can set it; the operator flag --allow-insecure-registries allows them everywhere.
const AllowInsecureRegistriesLabel = "wasme.io/allow-insecure-registries"

// insecureAllowed refuses plain HTTP and unverified TLS unless an admin allowed them: over
// either, anyone on the path can serve another module, or rewrite the auth challenge.
func (r *FilterDeploymentReconciler) insecureAllowed(ctx context.Context, namespace string, o *wasmev1.ImagePullOptions) error {
	var asked []string
	if o.PlainHTTP {
		asked = append(asked, "plainHttp")
	}
	if o.InsecureSkipVerify {
		asked = append(asked, "insecureSkipVerify")
	}
	if len(asked) == 0 || r.AllowInsecureRegistries {
		return nil
	}
	var ns corev1.Namespace
	if err := r.APIReader.Get(ctx, client.ObjectKey{Name: namespace}, &ns); err != nil {
		return fmt.Errorf("reading namespace %s for its %s label: %w", namespace, AllowInsecureRegistriesLabel, err)
	}
	if ns.Labels[AllowInsecureRegistriesLabel] == "true" {
		return nil
	}
	return fmt.Errorf("imagePullOptions.%s is not allowed in namespace %s: an admin allows it with the namespace label %s=true, or everywhere with the operator flag --allow-insecure-registries",
		strings.Join(asked, " and "), namespace, AllowInsecureRegistriesLabel)
}

// identity names the credentials and transport options, so the image cache can tell whose
// access the registry confirmed without keeping the secrets themselves.
func (o PullOptions) identity() string {
	h := sha256.New()
	for _, b := range [][]byte{o.DockerConfigJSON, []byte(o.Username), []byte(o.Password)} {
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	fmt.Fprintf(h, "%t/%t", o.PlainHTTP, o.InsecureSkipVerify)
	return hex.EncodeToString(h.Sum(nil))
}

// imageCache remembers pulled images by registry, repository and manifest digest (without their module bytes, which
// the module store holds), validation results, and tag resolutions, so steady-state passes
// neither pull nor run modules again.
type imageCache struct {
	pulls          singleflight.Group
	checksInFlight singleflight.Group
	mu             sync.Mutex
	max            int
	order          []string
	images         map[string]*Image
	checks         map[string]error
	resolves       map[string]resolution
	// verified: image key + "|" + PullOptions.identity() -> when the registry last accepted them.
	verified map[string]time.Time
}

type resolution struct {
	digest string
	at     time.Time
}

func newImageCache(max int) *imageCache {
	return &imageCache{max: max, images: map[string]*Image{}, checks: map[string]error{}, resolves: map[string]resolution{}, verified: map[string]time.Time{}}
}

func (c *imageCache) isVerified(key, id string, ttl time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	at, ok := c.verified[key+"|"+id]
	return ok && time.Since(at) < ttl
}

func (c *imageCache) setVerified(key, id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.verified) > 16*c.max {
		clear(c.verified)
	}
	c.verified[key+"|"+id] = time.Now()
}

func (c *imageCache) get(digest string) (*Image, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	img, ok := c.images[digest]
	return img, ok
}

func (c *imageCache) put(digest string, img *Image) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.images[digest]; !ok {
		c.order = append(c.order, digest)
	}
	c.images[digest] = img
	for len(c.order) > c.max {
		delete(c.images, c.order[0])
		c.order = c.order[1:]
	}
}

// check is a remembered validation result (err nil: the module passed).
type check struct{ err error }

func (c *imageCache) validated(key string) (check, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	err, ok := c.checks[key]
	return check{err}, ok
}

func (c *imageCache) setValidated(key string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.checks) > 16*c.max {
		clear(c.checks)
	}
	c.checks[key] = err
}

func (c *imageCache) resolved(key string, ttl time.Duration) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	res, ok := c.resolves[key]
	return res.digest, ok && time.Since(res.at) < ttl
}

func (c *imageCache) setResolved(key, digest string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.resolves) > 16*c.max {
		clear(c.resolves)
	}
	c.resolves[key] = resolution{digest, time.Now()}
}
