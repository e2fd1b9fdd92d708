package operator_test

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	wasmev1 "wasme.io/wasme/api/v1"
	"wasme.io/wasme/internal/operator"
	"wasme.io/wasme/internal/testing/registry"
	"wasme.io/wasme/pkg/wasmimage"
)

// runOperator starts this test's own operator with an egress policy of patterns.
func (cl *cluster) runOperator(patterns []string, imgOpts ...wasmimage.Option) {
	cl.t.Helper()
	p, err := wasmimage.NewEgressPolicy(patterns, nil)
	if err != nil {
		cl.t.Fatal(err)
	}
	cl.t.Cleanup(cl.startOperatorWith(cl.ctx, operator.Options{
		ResolveInterval: time.Hour,
		Images:          operator.RegistryImages{Options: imgOpts, Egress: p},
	}))
	cl.t.Cleanup(cl.deleteFilterDeployments)
}

// failure waits until the FilterDeployment stops with reason and a message containing want,
// and returns the message.
func (cl *cluster) failure(ns, name, reason, want string) string {
	cl.t.Helper()
	var msg string
	cl.eventually(reason+": "+want, func() (bool, string) {
		got := cl.fd(ns, name)
		c := apimeta.FindStatusCondition(got.Status.Conditions, wasmev1.ReadyCondition)
		if c == nil {
			return false, fmt.Sprintf("%+v", got.Status)
		}
		msg = c.Message
		return c.Reason == reason && strings.Contains(c.Message, want), c.Reason + ": " + c.Message
	})
	if got := cl.fd(ns, name); got.Status.ModuleDigest != "" {
		cl.t.Errorf("%s/%s has a module digest: %s", ns, name, got.Status.ModuleDigest)
	}
	return msg
}

func (cl *cluster) labelNamespace(ns, key, value string) {
	cl.t.Helper()
	var n corev1.Namespace
	if err := cl.c.Get(cl.ctx, client.ObjectKey{Name: ns}, &n); err != nil {
		cl.t.Fatal(err)
	}
	if n.Labels == nil {
		n.Labels = map[string]string{}
	}
	n.Labels[key] = value
	if err := cl.c.Update(cl.ctx, &n); err != nil {
		cl.t.Fatal(err)
	}
}

// touch changes an annotation, which makes the operator reconcile again.
func (cl *cluster) touch(ns, name string) {
	cl.t.Helper()
	fd := cl.fd(ns, name)
	if fd.Annotations == nil {
		fd.Annotations = map[string]string{}
	}
	fd.Annotations["test.wasme.io/touched"] = time.Now().Format(time.RFC3339Nano)
	if err := cl.c.Update(cl.ctx, fd); err != nil {
		cl.t.Fatal(err)
	}
}

func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func plainHTTP(fd *wasmev1.FilterDeployment) {
	fd.Spec.Filter.ImagePullOptions = &wasmev1.ImagePullOptions{PlainHTTP: true}
}

// TestEgressPolicyInStatus runs an operator with the default rule ("*": public addresses
// only) plus a few exact loopback hosts, the way an admin lists an in-cluster registry:
// a registry on loopback is refused by its address (also through a name), a realm pointing
// at an IMDS-like endpoint is never asked, a refused connection and an HTTP 500 read the
// same, and plain HTTP needs the admin's namespace label.
func TestEgressPolicyInStatus(t *testing.T) {
	cl := setupWith(t, setupOptions{istiod: currentIstiod, noOperator: true})
	var imdsHits atomic.Int32
	imds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		imdsHits.Add(1)
		fmt.Fprint(w, `{"token":"AKIA-instance-role-secret"}`)
	}))
	defer imds.Close()
	plainReg := registry.StartT(t, registry.Options{})
	if _, err := wasmimage.Push(cl.ctx, plainReg.Host+"/filters/custom-header:v1", customHeader(t),
		wasmimage.RuntimeConfig{RootIDs: []string{"add_header"}}, wasmimage.WithPlainHTTP(true)); err != nil {
		t.Fatal(err)
	}
	hostile := registry.NewProxy(t, plainReg)
	hostile.SetFault(func(w http.ResponseWriter, _ *http.Request) bool {
		w.Header().Set("Www-Authenticate", fmt.Sprintf(`Bearer realm="%s/latest/meta-data/iam/security-credentials/role",service="x"`, imds.URL))
		w.WriteHeader(http.StatusUnauthorized)
		return true
	})
	failing := registry.NewProxy(t, plainReg)
	failing.SetFault(func(w http.ResponseWriter, _ *http.Request) bool {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return true
	})
	closed := closedPort(t)
	cl.push("filters/custom-header:v1", customHeader(t))
	_, regPort, _ := net.SplitHostPort(cl.reg.Host)
	cl.runOperator([]string{"*", plainReg.Host, hostile.Host, failing.Host, closed}, registryOptions(cl.reg)...)

	insecureOK := env.Namespace(t)
	cl.labelNamespace(insecureOK, operator.AllowInsecureRegistriesLabel, "true")
	cl.apply(newFD(insecureOK, "loopback", cl.reg.Host+"/filters/custom-header:v1"))
	cl.apply(newFD(insecureOK, "byname", "localhost:"+regPort+"/filters/custom-header:v1"))
	cl.apply(newFD(insecureOK, "imds", hostile.Host+"/filters/custom-header:v1", plainHTTP))
	cl.apply(newFD(insecureOK, "refused", closed+"/filters/custom-header:v1", plainHTTP))
	cl.apply(newFD(insecureOK, "http500", failing.Host+"/filters/custom-header:v1", plainHTTP))

	cl.failure(insecureOK, "loopback", wasmev1.ImageFailedReason, cl.reg.Host+" is not allowed by the registry policy")
	cl.failure(insecureOK, "byname", wasmev1.ImageFailedReason, "localhost:"+regPort+" is not allowed by the registry policy")
	imdsHost := strings.TrimPrefix(imds.URL, "http://")
	cl.failure(insecureOK, "imds", wasmev1.ImageFailedReason, imdsHost+" is not allowed by the registry policy")
	if n := imdsHits.Load(); n != 0 {
		t.Errorf("the IMDS-like endpoint got %d requests", n)
	}
	refused := cl.failure(insecureOK, "refused", wasmev1.ImageFailedReason, "registry unreachable")
	http500 := cl.failure(insecureOK, "http500", wasmev1.ImageFailedReason, "registry unreachable")
	if a, b := strings.ReplaceAll(refused, closed, "HOST"), strings.ReplaceAll(http500, failing.Host, "HOST"); a != b {
		t.Errorf("a refused connection and an HTTP 500 read differently:\n%s\n%s", a, b)
	}
	for _, leak := range []string{"refused", "connect", "500", "Internal", "dial"} {
		if strings.Contains(strings.ReplaceAll(refused, closed, ""), leak) || strings.Contains(strings.ReplaceAll(http500, failing.Host, ""), leak) {
			t.Errorf("status names the low-level error (%q): %q / %q", leak, refused, http500)
		}
	}

	// Plain HTTP without the admin's label is refused; with it the same spec pulls.
	ns := env.Namespace(t)
	cl.apply(deployment(ns, "app", map[string]string{"app": "app"}, nil))
	cl.apply(newFD(ns, "plain", plainReg.Host+"/filters/custom-header:v1", plainHTTP))
	cl.failure(ns, "plain", wasmev1.ImageFailedReason, "imagePullOptions.plainHttp is not allowed in namespace "+ns)
	cl.labelNamespace(ns, operator.AllowInsecureRegistriesLabel, "true")
	cl.touch(ns, "plain")
	cl.eventually("the module digest after the label", func() (bool, string) {
		got := cl.fd(ns, "plain")
		return got.Status.ModuleDigest != "", fmt.Sprintf("%+v", got.Status)
	})
}

// TestCredentialsBoundAndCacheIsolated: a module one namespace pulled with its credentials
// from an htpasswd registry is not handed to another namespace that knows the digest but
// has no (or wrong) credentials, nor under another repository name; and a username/password
// secret never reaches a token realm on a second host.
func TestCredentialsBoundAndCacheIsolated(t *testing.T) {
	cl := setupWith(t, setupOptions{istiod: currentIstiod, noOperator: true})
	reg := registry.StartT(t, registry.Options{Users: map[string]string{"alice": "s3cret-pw"}, TLS: true})
	ref := reg.Host + "/private/custom-header:v1"
	img, err := wasmimage.Push(cl.ctx, ref, customHeader(t), wasmimage.RuntimeConfig{RootIDs: []string{"add_header"}},
		wasmimage.WithCAPEM(reg.CAPEM), wasmimage.WithCredentials("alice", "s3cret-pw"))
	if err != nil {
		t.Fatal(err)
	}
	pinned := reg.Host + "/private/custom-header@" + img.ManifestDigest.String()

	var realmMu sync.Mutex
	var realmAuth []string
	realm := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		realmMu.Lock()
		realmAuth = append(realmAuth, r.Header.Get("Authorization"))
		realmMu.Unlock()
		fmt.Fprint(w, `{"token":"t"}`)
	}))
	defer realm.Close()
	plainReg := registry.StartT(t, registry.Options{Users: map[string]string{"alice": "s3cret-pw"}})
	challenging := registry.NewProxy(t, plainReg)
	challenging.SetFault(func(w http.ResponseWriter, _ *http.Request) bool {
		w.Header().Set("Www-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="x"`, realm.URL))
		w.WriteHeader(http.StatusUnauthorized)
		return true
	})
	cl.runOperator([]string{reg.Host, challenging.Host, strings.TrimPrefix(realm.URL, "http://")}, registryOptions(reg)...)

	basic := base64.StdEncoding.EncodeToString([]byte("alice:s3cret-pw"))
	dockerConfig := func(ns, name, host, auth string) {
		s := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Type:       corev1.SecretTypeDockerConfigJson,
			Data:       map[string][]byte{corev1.DockerConfigJsonKey: fmt.Appendf(nil, `{"auths":{%q:{"auth":%q}}}`, host, auth)},
		}
		if err := cl.c.Create(cl.ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	withSecret := func(name string) func(*wasmev1.FilterDeployment) {
		return func(fd *wasmev1.FilterDeployment) {
			fd.Spec.Filter.ImagePullOptions = &wasmev1.ImagePullOptions{PullSecret: name}
		}
	}

	owner := env.Namespace(t)
	dockerConfig(owner, "regcred", reg.Host, basic)
	cl.apply(newFD(owner, "f", pinned, withSecret("regcred")))
	cl.eventually("the owner's pull", func() (bool, string) {
		got := cl.fd(owner, "f")
		return got.Status.ModuleDigest == img.ModuleDigest.String(), fmt.Sprintf("%+v", got.Status)
	})

	// The module is in the operator's cache now; knowing the digest is not enough.
	anonymous := env.Namespace(t)
	cl.apply(newFD(anonymous, "f", pinned))
	cl.failure(anonymous, "f", wasmev1.ImageFailedReason, "unauthorized")

	wrong := env.Namespace(t)
	dockerConfig(wrong, "regcred", reg.Host, base64.StdEncoding.EncodeToString([]byte("alice:guess")))
	cl.apply(newFD(wrong, "f", pinned, withSecret("regcred")))
	cl.failure(wrong, "f", wasmev1.ImageFailedReason, "unauthorized")

	// Credentials keyed for another host are not this registry's.
	elsewhere := env.Namespace(t)
	dockerConfig(elsewhere, "regcred", "registry.example.com", basic)
	cl.apply(newFD(elsewhere, "f", pinned, withSecret("regcred")))
	cl.failure(elsewhere, "f", wasmev1.ImageFailedReason, "unauthorized")

	// Another repository name with the same digest is another image.
	otherRepo := env.Namespace(t)
	dockerConfig(otherRepo, "regcred", reg.Host, basic)
	cl.apply(newFD(otherRepo, "f", reg.Host+"/other/repo@"+img.ManifestDigest.String(), withSecret("regcred")))
	cl.failure(otherRepo, "f", wasmev1.ImageFailedReason, "not found")

	// A username/password secret goes to the image's registry only, not to the realm on
	// another host that registry names (over plain HTTP anyone could have written it).
	realmNS := env.Namespace(t)
	cl.labelNamespace(realmNS, operator.AllowInsecureRegistriesLabel, "true")
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: realmNS, Name: "basic"},
		Data:       map[string][]byte{"username": []byte("alice"), "password": []byte("s3cret-pw")},
	}
	if err := cl.c.Create(cl.ctx, s); err != nil {
		t.Fatal(err)
	}
	cl.apply(newFD(realmNS, "f", challenging.Host+"/private/custom-header:v1", func(fd *wasmev1.FilterDeployment) {
		fd.Spec.Filter.ImagePullOptions = &wasmev1.ImagePullOptions{PullSecret: "basic", PlainHTTP: true}
	}))
	cl.failure(realmNS, "f", wasmev1.ImageFailedReason, "")
	cl.eventually("the realm to be asked", func() (bool, string) {
		realmMu.Lock()
		defer realmMu.Unlock()
		return len(realmAuth) > 0, "no request at the realm"
	})
	realmMu.Lock()
	for _, a := range realmAuth {
		if a != "" {
			t.Errorf("the realm on another host got Authorization %q", a)
		}
	}
	realmMu.Unlock()

	// The owner still gets its module (the refusals above did not evict or poison it).
	if got := cl.fd(owner, "f"); got.Status.ModuleDigest != img.ModuleDigest.String() {
		t.Errorf("owner lost its module: %+v", got.Status)
	}
}
