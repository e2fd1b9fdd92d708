package cacheprotocol_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"wasme.io/wasme/internal/cacheprotocol"
)

// TestEnsureServingTLS runs replicas starting at once against the API server: one Secret is
// made, all serve its certificate, and the CA goes to the ConfigMap.
func TestEnsureServingTLS(t *testing.T) {
	ns := env.Namespace(t)
	ctx := context.Background()
	const replicas = 4
	results := make([]*cacheprotocol.ServingTLS, replicas)
	errs := make([]error, replicas)
	var wg sync.WaitGroup
	for i := range replicas {
		wg.Go(func() {
			results[i], errs[i] = cacheprotocol.EnsureServingTLS(ctx, env.Client, ns, "module-tls", "module-ca")
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
	}
	secret := &corev1.Secret{}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "module-tls"}, secret); err != nil {
		t.Fatal(err)
	}
	for i, r := range results {
		if !bytes.Equal(r.Certificate.Certificate[0], results[0].Certificate.Certificate[0]) || !bytes.Equal(r.CAPEM, secret.Data[cacheprotocol.CAKey]) {
			t.Errorf("replica %d serves another certificate than the Secret's", i)
		}
	}
	cm := &corev1.ConfigMap{}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "module-ca"}, cm); err != nil {
		t.Fatal(err)
	}
	if cm.Data[cacheprotocol.CAKey] != string(secret.Data[cacheprotocol.CAKey]) {
		t.Error("the ConfigMap does not hold the Secret's CA")
	}

	t.Run("a restart keeps the Secret", func(t *testing.T) {
		again, err := cacheprotocol.EnsureServingTLS(ctx, env.Client, ns, "module-tls", "module-ca")
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again.Certificate.Certificate[0], results[0].Certificate.Certificate[0]) {
			t.Error("a second start made a new certificate")
		}
	})

	t.Run("an admin's new Secret reaches the ConfigMap", func(t *testing.T) {
		data, err := cacheprotocol.NewServingSecretData(cacheprotocol.ServiceDNSNames(ns), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		secret.Data = data
		if err := env.Client.Update(ctx, secret); err != nil {
			t.Fatal(err)
		}
		if _, err := cacheprotocol.EnsureServingTLS(ctx, env.Client, ns, "module-tls", "module-ca"); err != nil {
			t.Fatal(err)
		}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "module-ca"}, cm); err != nil {
			t.Fatal(err)
		}
		if cm.Data[cacheprotocol.CAKey] != string(data[cacheprotocol.CAKey]) {
			t.Error("the ConfigMap still holds the old CA")
		}
	})

	t.Run("a Secret that does not fit together is refused", func(t *testing.T) {
		a, err := cacheprotocol.NewServingSecretData([]string{"a"}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		b, err := cacheprotocol.NewServingSecretData([]string{"b"}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		for name, data := range map[string]map[string][]byte{
			"certificate of another CA":  {corev1.TLSCertKey: a[corev1.TLSCertKey], corev1.TLSPrivateKeyKey: a[corev1.TLSPrivateKeyKey], cacheprotocol.CAKey: b[cacheprotocol.CAKey]},
			"no ca.crt":                  {corev1.TLSCertKey: a[corev1.TLSCertKey], corev1.TLSPrivateKeyKey: a[corev1.TLSPrivateKeyKey]},
			"key of another certificate": {corev1.TLSCertKey: a[corev1.TLSCertKey], corev1.TLSPrivateKeyKey: b[corev1.TLSPrivateKeyKey], cacheprotocol.CAKey: a[cacheprotocol.CAKey]},
		} {
			t.Run(name, func(t *testing.T) {
				s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: "bad-"}, Type: corev1.SecretTypeOpaque, Data: data}
				if err := env.Client.Create(ctx, s); err != nil {
					t.Fatal(err)
				}
				_, err := cacheprotocol.EnsureServingTLS(ctx, env.Client, ns, s.Name, "module-ca-"+s.Name)
				if err == nil || !strings.Contains(err.Error(), "Secret "+ns+"/"+s.Name+":") {
					t.Fatalf("EnsureServingTLS: %v, want an error naming the Secret", err)
				}
			})
		}
	})
}

// TestClientOverTLS fetches from Server.Serve as a node cache does, with the CA the operator
// publishes, and with another one.
func TestClientOverTLS(t *testing.T) {
	ns := env.Namespace(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	serving, err := cacheprotocol.EnsureServingTLS(ctx, env.Client, ns, "module-tls", "module-ca")
	if err != nil {
		t.Fatal(err)
	}
	module := []byte("\x00asm\x01\x00\x00\x00 over TLS")
	filterDeployment(t, ns, "tls", digestOf(module))
	srv, err := cacheprotocol.New(cacheprotocol.Options{
		Client:        env.IndexedReader(t, cacheprotocol.IndexFilterDeployments),
		Authenticator: cacheprotocol.NewTokenReviewAuthenticator(env.Client, time.Minute, cacheprotocol.Audience),
		AllowedUsers:  []string{"system:serviceaccount:" + ns + ":wasme-cache"},
		Registerer:    prometheus.NewRegistry(),
		TLSConfig:     serving.TLSConfig(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Put(digestOf(module), module); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	other, err := cacheprotocol.NewServingSecretData(cacheprotocol.ServiceDNSNames(ns), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	rightCA, wrongCA := write("ca.crt", serving.CAPEM), write("other-ca.crt", other[cacheprotocol.CAKey])
	token := write("token", []byte(serviceAccountToken(t, ns, "wasme-cache")))
	tests := []struct {
		name       string
		caFile     string
		serverName string
		wantErr    string
	}{
		{name: "the published CA", caFile: rightCA, serverName: cacheprotocol.ServerName(ns)},
		{name: "another CA", caFile: wrongCA, serverName: cacheprotocol.ServerName(ns), wantErr: "not signed by the CA in " + wrongCA},
		{name: "another name", caFile: rightCA, serverName: "wasme-operator.elsewhere.svc", wantErr: "not for this name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := cacheprotocol.NewClient(cacheprotocol.ClientOptions{
				URL: "https://" + ln.Addr().String(), TokenFile: token, CAFile: tc.caFile, ServerName: tc.serverName, NodeName: "n",
			})
			if err != nil {
				t.Fatal(err)
			}
			rc, err := c.Fetch(ctx, strings.TrimPrefix(digestOf(module), "sha256:"))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Fetch: %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			got, err := io.ReadAll(rc)
			if err != nil || !bytes.Equal(got, module) {
				t.Fatalf("read %q, %v; want the module", got, err)
			}
		})
	}

	t.Run("the client follows a new CA file", func(t *testing.T) {
		caFile := write("rotating-ca.crt", other[cacheprotocol.CAKey])
		c, err := cacheprotocol.NewClient(cacheprotocol.ClientOptions{
			URL: "https://" + ln.Addr().String(), TokenFile: token, CAFile: caFile, ServerName: cacheprotocol.ServerName(ns),
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Fetch(ctx, strings.TrimPrefix(digestOf(module), "sha256:")); err == nil {
			t.Fatal("fetched with the wrong CA")
		}
		write("rotating-ca.crt", serving.CAPEM)
		rc, err := c.Fetch(ctx, strings.TrimPrefix(digestOf(module), "sha256:"))
		if err != nil {
			t.Fatalf("after the CA file changed: %v", err)
		}
		rc.Close()
	})

	t.Run("Serve refuses to serve without TLS", func(t *testing.T) {
		plain, err := cacheprotocol.New(cacheprotocol.Options{
			Client: env.Client, Authenticator: cacheprotocol.NewTokenReviewAuthenticator(env.Client, 0, ""), Registerer: prometheus.NewRegistry(),
		})
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if err := plain.Serve(ctx, ln); err == nil || !strings.Contains(err.Error(), "TLSConfig is required") {
			t.Fatalf("Serve: %v, want a refusal", err)
		}
	})

	t.Run("NewClient refuses plain HTTP", func(t *testing.T) {
		_, err := cacheprotocol.NewClient(cacheprotocol.ClientOptions{URL: "http://" + ln.Addr().String(), TokenFile: token, CAFile: rightCA})
		if err == nil || !strings.Contains(err.Error(), "want https://") {
			t.Fatalf("NewClient: %v, want a refusal", err)
		}
	})
}
