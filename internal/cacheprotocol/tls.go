package cacheprotocol

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

const (
	// DefaultTLSSecret is the Secret (type kubernetes.io/tls, with ca.crt) in the operator's
	// namespace that holds the module server's certificate. The operator creates it when it
	// is missing; an admin may create it instead (cert-manager, for example).
	DefaultTLSSecret = "wasme-module-tls"
	// DefaultCAConfigMap is the ConfigMap in the operator's namespace where the operator
	// publishes the Secret's ca.crt for the node caches, which must not read the Secret: it
	// holds the private key.
	DefaultCAConfigMap = "wasme-module-ca"
	// CAKey is the key of the CA certificate (PEM) in the Secret and the ConfigMap.
	CAKey = "ca.crt"
	// ServiceName is the module server's Service; the certificate the operator makes is for
	// its DNS names.
	ServiceName = "wasme-operator"
	// certValidity is long because nothing renews a generated certificate; an admin who wants
	// rotation brings a Secret that cert-manager renews.
	certValidity = 10 * 365 * 24 * time.Hour
)

// ServiceDNSNames are the names the module server's Service has in namespace.
func ServiceDNSNames(namespace string) []string {
	return []string{
		ServiceName,
		ServiceName + "." + namespace,
		ServiceName + "." + namespace + ".svc",
		ServiceName + "." + namespace + ".svc.cluster.local",
	}
}

// ServerName is the TLS server name node caches verify, the Service's name in namespace.
func ServerName(namespace string) string { return ServiceName + "." + namespace + ".svc" }

// ServingTLS is the module server's certificate and the CA that signed it.
type ServingTLS struct {
	// Certificate is served to the node caches.
	Certificate tls.Certificate
	// CAPEM is the CA certificate node caches verify it with.
	CAPEM []byte
}

// TLSConfig is the server side's TLS configuration.
func (s *ServingTLS) TLSConfig() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{s.Certificate}, MinVersion: tls.VersionTLS12}
}

// EnsureServingTLS returns the module server's certificate from Secret namespace/secretName,
// creating it (a new CA and a certificate for ServiceDNSNames(namespace)) if it does not
// exist, and publishes the CA in ConfigMap namespace/caConfigMap. Replicas starting at once
// all converge on whichever Secret was created first: creation is create-if-absent, and a
// replica that loses the race reads the winner's. c must read uncached (no list or watch of
// Secrets is needed).
func EnsureServingTLS(ctx context.Context, c client.Client, namespace, secretName, caConfigMap string) (*ServingTLS, error) {
	secret, err := ensureSecret(ctx, c, namespace, secretName)
	if err != nil {
		return nil, err
	}
	st, err := parseServingSecret(secret)
	if err != nil {
		return nil, fmt.Errorf("the module server's Secret %s/%s: %w", namespace, secretName, err)
	}
	if err := publishCA(ctx, c, namespace, caConfigMap, st.CAPEM); err != nil {
		return nil, err
	}
	return st, nil
}

func ensureSecret(ctx context.Context, c client.Client, namespace, name string) (*corev1.Secret, error) {
	key := client.ObjectKey{Namespace: namespace, Name: name}
	secret := &corev1.Secret{}
	err := c.Get(ctx, key, secret)
	if err == nil {
		return secret, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("reading the module server's Secret %s: %w", key, err)
	}
	data, err := NewServingSecretData(ServiceDNSNames(namespace), time.Now())
	if err != nil {
		return nil, err
	}
	secret = &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{"app.kubernetes.io/managed-by": "wasme-operator"}},
		Type:       corev1.SecretTypeTLS,
		Data:       data,
	}
	err = c.Create(ctx, secret)
	if apierrors.IsAlreadyExists(err) {
		// Another replica was first; everyone serves its certificate.
		secret = &corev1.Secret{}
		err = c.Get(ctx, key, secret)
	}
	if err != nil {
		return nil, fmt.Errorf("creating the module server's Secret %s: %w", key, err)
	}
	return secret, nil
}

func parseServingSecret(s *corev1.Secret) (*ServingTLS, error) {
	cert, err := tls.X509KeyPair(s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return nil, fmt.Errorf("%s and %s: %w", corev1.TLSCertKey, corev1.TLSPrivateKeyKey, err)
	}
	caPEM := s.Data[CAKey]
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s: no PEM certificate; the node caches verify the module server with it", CAKey)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", corev1.TLSCertKey, err)
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	// A mismatch would fail every node cache's handshake; better to say so here, once.
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return nil, fmt.Errorf("%s is not signed by %s: %w", corev1.TLSCertKey, CAKey, err)
	}
	return &ServingTLS{Certificate: cert, CAPEM: caPEM}, nil
}

func publishCA(ctx context.Context, c client.Client, namespace, name string, caPEM []byte) error {
	key := client.ObjectKey{Namespace: namespace, Name: name}
	for range 5 {
		cm := &corev1.ConfigMap{}
		err := c.Get(ctx, key, cm)
		switch {
		case apierrors.IsNotFound(err):
			cm = &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{"app.kubernetes.io/managed-by": "wasme-operator"}},
				Data:       map[string]string{CAKey: string(caPEM)},
			}
			err = c.Create(ctx, cm)
		case err != nil:
		case cm.Data[CAKey] == string(caPEM):
			return nil
		default:
			// The Secret changed (an admin replaced it): the node caches follow.
			if cm.Data == nil {
				cm.Data = map[string]string{}
			}
			cm.Data[CAKey] = string(caPEM)
			err = c.Update(ctx, cm)
		}
		if err == nil {
			return nil
		}
		if !apierrors.IsAlreadyExists(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("publishing the module server's CA in ConfigMap %s: %w", key, err)
		}
	}
	return fmt.Errorf("publishing the module server's CA in ConfigMap %s: it kept changing under us", key)
}

// NewServingSecretData makes a new CA and a serving certificate it signs for dnsNames, as the
// data of a kubernetes.io/tls Secret with ca.crt.
func NewServingSecretData(dnsNames []string, now time.Time) (map[string][]byte, error) {
	if len(dnsNames) == 0 {
		return nil, errors.New("a serving certificate needs at least one DNS name")
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caSerial, err := serial()
	if err != nil {
		return nil, err
	}
	leafSerial, err := serial()
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          caSerial,
		Subject:               pkix.Name{CommonName: "wasme module server CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("making the module server's CA: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: leafSerial,
		Subject:      pkix.Name{CommonName: dnsNames[0]},
		DNSNames:     dnsNames,
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("making the module server's certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return map[string][]byte{
		corev1.TLSCertKey:       pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		corev1.TLSPrivateKeyKey: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		CAKey:                   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
	}, nil
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// caPool parses PEM CA certificates.
func caPool(caPEM []byte) (*x509.CertPool, bool) {
	pool := x509.NewCertPool()
	return pool, pool.AppendCertsFromPEM(bytes.TrimSpace(caPEM))
}
