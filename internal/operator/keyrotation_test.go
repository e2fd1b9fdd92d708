package operator_test

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	wasmev1 "wasme.io/wasme/api/v1"
)

// keySecret creates or updates a Secret holding one public key as cosign.pub.
func (cl *cluster) keySecret(ns, name string, pub []byte) {
	cl.t.Helper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	err := cl.c.Get(cl.ctx, client.ObjectKeyFromObject(s), s)
	s.Data = map[string][]byte{wasmev1.DefaultPublicKeyKey: pub}
	if err == nil {
		err = cl.c.Update(cl.ctx, s)
	} else {
		err = cl.c.Create(cl.ctx, s)
		cl.t.Cleanup(func() { _ = env.Client.Delete(cl.ctx, s) })
	}
	if err != nil {
		cl.t.Fatal(err)
	}
}

// TestSecretKeyRotation rotates the key in a Secret (a FilterDeployment's own, and a
// FilterPolicy's in the operator's namespace) and sees every FilterDeployment re-verified
// through the Secret watch: the old key's signature is refused from then on and the new key's
// accepted. The resolve interval is an hour, and a refused FilterDeployment is Stalled (no
// backoff retry), so nothing but the watch brings the pass that re-reads the Secret.
func TestSecretKeyRotation(t *testing.T) {
	cl := setupWith(t, setupOptions{istiod: currentIstiod, resolveInterval: time.Hour})
	oldKey, newKey := makeKey(t), makeKey(t)
	base := customHeader(t)
	byOld := cl.push("filters/by-old:v1", variant(base, "by-old"))
	cl.sign(byOld, oldKey)
	byNew := cl.push("filters/by-new:v1", variant(base, "by-new"))
	cl.sign(byNew, newKey)

	// spec.filter.verify naming a Secret of the FilterDeployment's namespace.
	ns := env.Namespace(t)
	cl.keySecret(ns, "signing-key", oldKey.pub)
	cl.apply(newFD(ns, "by-old", byOld, verifyWith("Secret", "signing-key")))
	cl.apply(newFD(ns, "by-new", byNew, verifyWith("Secret", "signing-key")))
	cl.verifiedBy(ns, "by-old", oldKey.id)
	cl.failure(ns, "by-new", wasmev1.VerificationFailedReason, "no signature verifies")

	cl.keySecret(ns, "signing-key", newKey.pub)
	cl.verifiedBy(ns, "by-new", newKey.id)
	cl.refused(ns, "by-old", wasmev1.VerificationFailedReason, "no signature verifies")

	// A FilterPolicy's requiredKeys naming a Secret of the operator's namespace.
	secret := "policy-key-" + ns
	cl.keySecret("wasme", secret, oldKey.pub)
	pol := &wasmev1.FilterPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "rotation-" + ns},
		Spec: wasmev1.FilterPolicySpec{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"wasme.io/rotation": ns}},
			RequiredKeys:      []wasmev1.KeyReference{{Kind: "Secret", Name: secret}},
		},
	}
	cl.apply(pol)
	t.Cleanup(func() { _ = env.Client.Delete(cl.ctx, pol) })
	governed := env.Namespace(t)
	cl.labelNamespace(governed, "wasme.io/rotation", ns)
	cl.apply(newFD(governed, "by-old", byOld))
	cl.apply(newFD(governed, "by-new", byNew))
	cl.verifiedBy(governed, "by-old", oldKey.id)
	cl.failure(governed, "by-new", wasmev1.VerificationFailedReason, "FilterPolicy/"+pol.Name+" requires a signature")

	cl.keySecret("wasme", secret, newKey.pub)
	cl.verifiedBy(governed, "by-new", newKey.id)
	cl.refused(governed, "by-old", wasmev1.VerificationFailedReason, "FilterPolicy/"+pol.Name+" requires a signature")
}
