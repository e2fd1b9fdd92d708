package operator_test

import (
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/signing"
	"wasme.io/wasme/pkg/wasmimage"
)

type testKey struct {
	signer crypto.Signer
	pub    []byte
	id     string
}

func makeKey(t *testing.T) testKey {
	t.Helper()
	priv, pub, err := signing.GenerateKeyPair(nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := signing.LoadPrivateKey(priv, nil)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := signing.ParsePublicKeys(pub)
	if err != nil {
		t.Fatal(err)
	}
	return testKey{signer: s, pub: pub, id: keys[0].ID}
}

// variant is the custom-header module with a custom section naming tag, so each image of the
// test has its own module digest (a custom section changes nothing the filter does).
func variant(base []byte, tag string) []byte {
	body := append(append([]byte{byte(len(tag))}, tag...), "wasme-test"...)
	return append(append(append([]byte{}, base...), 0, byte(len(body))), body...)
}

func moduleDigest(mod []byte) string {
	sum := sha256.Sum256(mod)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// sign signs the manifest ref resolves to now with k and returns that digest.
func (cl *cluster) sign(ref string, k testKey) string {
	cl.t.Helper()
	repo, desc, err := wasmimage.ResolveDescriptor(cl.ctx, ref, wasmimage.WithCAPEM(cl.reg.CAPEM))
	if err != nil {
		cl.t.Fatal(err)
	}
	if _, err := signing.Sign(cl.ctx, repo, desc, k.signer); err != nil {
		cl.t.Fatal(err)
	}
	return desc.Digest.String()
}

func (cl *cluster) keyConfigMap(ns, name string, data string) {
	cl.t.Helper()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	err := cl.c.Get(cl.ctx, client.ObjectKeyFromObject(cm), cm)
	cm.Data = map[string]string{wasmev1.DefaultPublicKeyKey: data}
	if err == nil {
		err = cl.c.Update(cl.ctx, cm)
	} else {
		err = cl.c.Create(cl.ctx, cm)
		cl.t.Cleanup(func() { _ = env.Client.Delete(cl.ctx, cm) })
	}
	if err != nil {
		cl.t.Fatal(err)
	}
}

func verifyWith(kind, name string) func(*wasmev1.FilterDeployment) {
	return func(fd *wasmev1.FilterDeployment) {
		fd.Spec.Filter.Verify = &wasmev1.ImageVerification{Keys: []wasmev1.KeyReference{{Kind: kind, Name: name}}}
	}
}

// verifiedBy waits until the FilterDeployment has pulled its module under a verified
// signature of signer and returns it.
func (cl *cluster) verifiedBy(ns, name, signer string) *wasmev1.FilterDeployment {
	cl.t.Helper()
	var got *wasmev1.FilterDeployment
	cl.eventually(ns+"/"+name+" verified", func() (bool, string) {
		got = cl.fd(ns, name)
		v := got.Status.VerifiedSignature
		c := apimeta.FindStatusCondition(got.Status.Conditions, wasmev1.ReadyCondition)
		msg := fmt.Sprintf("verified %+v, condition %+v", v, c)
		return got.Status.ModuleDigest != "" && v != nil && v.Digest == got.Status.ImageDigest && slices.Contains(v.Signers, signer) &&
			(c == nil || c.Reason != wasmev1.VerificationFailedReason), msg
	})
	return got
}

// TestSignedFilters runs the operator against the real registry: spec.filter.verify with keys
// from a ConfigMap or a Secret, a cluster FilterPolicy by namespace label, each bad input of
// issue 20 Stalled with its reason and no module pulled or handed to the nodes, a key rotation
// re-verifying through the ConfigMap watch, and a tag moved to an unsigned image leaving the
// verified digest deployed.
func TestSignedFilters(t *testing.T) {
	cl := setupWith(t, setupOptions{istiod: currentIstiod, resolveInterval: 2 * time.Second})
	good, other := makeKey(t), makeKey(t)
	base := customHeader(t)
	signedMod, unsignedMod, movedMod := variant(base, "signed"), variant(base, "unsigned"), variant(base, "moved")
	signed := cl.push("filters/signed:v1", signedMod)
	signedDigest := cl.sign(signed, good)
	unsigned := cl.push("filters/unsigned:v1", unsignedMod)
	// A signature of the signed image copied onto another: it names the other digest.
	copied := cl.push("filters/copied:v1", variant(base, "copied"))
	{
		repo, desc, err := wasmimage.ResolveDescriptor(cl.ctx, copied, wasmimage.WithCAPEM(cl.reg.CAPEM))
		if err != nil {
			t.Fatal(err)
		}
		b, err := signing.BundleFor(digest.Digest(signedDigest), good.signer)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := signing.Attach(cl.ctx, repo, desc, b); err != nil {
			t.Fatal(err)
		}
	}

	ns := env.Namespace(t)
	cl.keyConfigMap(ns, "keys", string(good.pub))
	cl.keyConfigMap(ns, "other-keys", string(other.pub))
	cl.keyConfigMap(ns, "bad-keys", "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "key-secret"}, Data: map[string][]byte{"cosign.pub": good.pub}}
	cl.apply(sec)

	cl.apply(newFD(ns, "ok", signed, verifyWith("ConfigMap", "keys")))
	cl.apply(newFD(ns, "ok-secret", signed, verifyWith("Secret", "key-secret")))
	cl.apply(newFD(ns, "unsigned", unsigned, verifyWith("ConfigMap", "keys")))
	cl.apply(newFD(ns, "wrong-key", signed, verifyWith("ConfigMap", "other-keys")))
	cl.apply(newFD(ns, "other-digest", copied, verifyWith("ConfigMap", "keys")))
	cl.apply(newFD(ns, "no-secret", signed, verifyWith("Secret", "missing")))
	cl.apply(newFD(ns, "malformed", signed, verifyWith("ConfigMap", "bad-keys")))

	ok := cl.verifiedBy(ns, "ok", good.id)
	if ok.Status.ImageDigest != signedDigest || ok.Status.ModuleDigest != moduleDigest(signedMod) {
		t.Errorf("ok: image %s module %s, want %s %s", ok.Status.ImageDigest, ok.Status.ModuleDigest, signedDigest, moduleDigest(signedMod))
	}
	if got := ok.Status.VerifiedSignature.RequiredBy; !slices.Equal(got, []string{"spec.filter.verify"}) {
		t.Errorf("requiredBy %v", got)
	}
	cl.verifiedBy(ns, "ok-secret", good.id)
	cl.failure(ns, "unsigned", wasmev1.VerificationFailedReason, "has no Sigstore signature")
	cl.failure(ns, "wrong-key", wasmev1.VerificationFailedReason, "no signature verifies")
	cl.failure(ns, "other-digest", wasmev1.VerificationFailedReason, "digest")
	cl.failure(ns, "no-secret", wasmev1.VerificationFailedReason, `Secret "missing" not found in namespace `+ns)
	cl.failure(ns, "malformed", wasmev1.VerificationFailedReason, "malformed key")

	// An admin's policy for namespaces labelled wasme.io/signed=required: one registry path,
	// signatures by the key in the operator's namespace.
	cl.keyConfigMap("wasme", "filter-signing-keys", string(good.pub))
	pol := &wasmev1.FilterPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "signed-" + ns},
		Spec: wasmev1.FilterPolicySpec{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"wasme.io/signed": "required-" + ns}},
			AllowedRegistries: []string{cl.reg.Host + "/filters"},
			RequiredKeys:      []wasmev1.KeyReference{{Kind: "ConfigMap", Name: "filter-signing-keys"}},
		},
	}
	cl.apply(pol)
	t.Cleanup(func() { _ = env.Client.Delete(cl.ctx, pol) })
	governed := env.Namespace(t)
	cl.labelNamespace(governed, "wasme.io/signed", "required-"+ns)
	elsewhere := cl.push("elsewhere/signed:v1", variant(base, "elsewhere"))
	cl.sign(elsewhere, good)
	cl.apply(newFD(governed, "signed", signed))
	cl.apply(newFD(governed, "unsigned", unsigned))
	cl.apply(newFD(governed, "elsewhere", elsewhere))
	pg := cl.verifiedBy(governed, "signed", good.id)
	if got := pg.Status.VerifiedSignature.RequiredBy; !slices.Equal(got, []string{"FilterPolicy/" + pol.Name}) {
		t.Errorf("requiredBy %v", got)
	}
	cl.failure(governed, "unsigned", wasmev1.VerificationFailedReason, "FilterPolicy/"+pol.Name+" requires a signature")
	cl.failure(governed, "elsewhere", wasmev1.PolicyDeniedReason, "allows only the registries "+cl.reg.Host+"/filters")
	// A namespace the policy does not select takes the unsigned image.
	free := env.Namespace(t)
	cl.apply(newFD(free, "unsigned", unsigned))
	cl.eventually("the unsigned image outside the policy", func() (bool, string) {
		got := cl.fd(free, "unsigned")
		return got.Status.ModuleDigest == moduleDigest(unsignedMod) && got.Status.VerifiedSignature == nil, fmt.Sprintf("%+v", got.Status)
	})
	if err := cl.c.Delete(cl.ctx, newFD(free, "unsigned", unsigned)); err != nil {
		t.Fatal(err)
	}

	// Key rotation: the ConfigMap now holds another key; the watch re-verifies at once.
	cl.keyConfigMap(ns, "keys", string(other.pub))
	cl.refused(ns, "ok", wasmev1.VerificationFailedReason, "no signature verifies")
	cl.keyConfigMap(ns, "keys", string(other.pub)+string(good.pub))
	cl.verifiedBy(ns, "ok", good.id)

	// The tag moves to an unsigned image: refused, and the verified digest stays the one in
	// status (the EnvoyFilters keep loading it); the new module is never pulled.
	cl.push("filters/signed:v1", movedMod)
	cl.refused(ns, "ok", wasmev1.VerificationFailedReason, "has no Sigstore signature")
	got := cl.fd(ns, "ok")
	if got.Status.ImageDigest != signedDigest || got.Status.VerifiedSignature == nil || got.Status.VerifiedSignature.Digest != signedDigest {
		t.Errorf("after the tag moved: image %s verified %+v, want %s", got.Status.ImageDigest, got.Status.VerifiedSignature, signedDigest)
	}
	// Nothing unverified reached the nodes: the ModuleSet the node caches fetch by names only
	// verified modules.
	set := moduleSet(cl)
	for _, bad := range []string{moduleDigest(unsignedMod), moduleDigest(movedMod)} {
		if slices.Contains(set, bad) {
			t.Errorf("the ModuleSet %v names the unverified module %s", set, bad)
		}
	}
	if !slices.Contains(set, moduleDigest(signedMod)) {
		t.Errorf("the ModuleSet %v lacks the verified module", set)
	}
	if strings.Contains(fmt.Sprint(set), "error") {
		t.Error(set)
	}
}

// refused waits for a Ready=False condition of reason whose message holds want, for a
// FilterDeployment that already runs a verified module (which stays: see docs/security.md).
func (cl *cluster) refused(ns, name, reason, want string) {
	cl.t.Helper()
	cl.eventually(reason+": "+want, func() (bool, string) {
		c := apimeta.FindStatusCondition(cl.fd(ns, name).Status.Conditions, wasmev1.ReadyCondition)
		if c == nil {
			return false, "no Ready condition"
		}
		return c.Reason == reason && strings.Contains(c.Message, want), c.Reason + ": " + c.Message
	})
}
