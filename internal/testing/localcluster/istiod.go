package localcluster

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"wasme.io/wasme/internal/testing/proc"
)

// Istiod is a running pilot-discovery.
type Istiod struct {
	// XDSAddr is the plaintext xDS gRPC address (--grpcAddr), what sidecars connect to here.
	XDSAddr string
	// SecureXDSAddr is the TLS xDS address (--secureGRPCAddr, a cluster's port 15012), whose
	// certificate names IstiodServerName and is signed by CAPEM. istiod authenticates Kubernetes
	// tokens (audience istio-ca) there, which its xDS debug types (istio.io/debug/syncz) require.
	SecureXDSAddr string
	// CAPEM is the CA of the secure address's certificate.
	CAPEM []byte
	// MonitoringAddr is istiod's monitoring address (--monitoringAddr, a cluster's 15014): its
	// metrics and its debug endpoints (/debug/syncz), which istiod serves to authenticated
	// callers and, unauthenticated, to loopback ones (as every caller is here).
	MonitoringAddr string
	// HTTPAddr serves /ready and istiod's debug endpoints (/debug/configz, /debug/syncz ...).
	HTTPAddr string
	// Version is the Istio version it is built from, e.g. "1.31".
	Version string
	// LogFile is where its output goes.
	LogFile string

	proc *proc.Process
}

// istiodEnv turns off what needs a real cluster around istiod, so it runs as a plain process
// against our API server:
//   - ENABLE_CA_SERVER=false, PILOT_CERT_PROVIDER=none: no CA, no DNS certificates (the test
//     proxy talks plaintext xDS; mTLS between workloads is not part of wasme's contract);
//   - INJECT_ENABLED=false, VALIDATION_WEBHOOK_CONFIG_NAME="": no webhooks to patch (there is
//     no kubelet to run injected pods, and the harness writes pods itself);
//   - POD_NAME/POD_NAMESPACE/REVISION: what the Downward API gives it in a cluster;
//   - PILOT_ENABLE_GATEWAY_API=false: the Gateway API CRDs are not installed here;
//   - ISTIOD_CUSTOM_HOST: nothing resolves istiod.istio-system.svc here;
//   - DEBUG_ENDPOINT_AUTH_ALLOWED_NAMESPACES=wasme: the operator (namespace wasme) may read
//     the sync state of every namespace's proxies, as docs/status.md tells admins to set.
func istiodEnv(kubeconfig string) []string {
	return []string{
		"KUBECONFIG=" + kubeconfig,
		"ENABLE_CA_SERVER=false",
		"PILOT_CERT_PROVIDER=none",
		"INJECT_ENABLED=false",
		"VALIDATION_WEBHOOK_CONFIG_NAME=",
		"POD_NAME=istiod-local",
		"POD_NAMESPACE=istio-system",
		"REVISION=default",
		"PILOT_ENABLE_GATEWAY_API=false",
		"ISTIOD_CUSTOM_HOST=localhost",
		"CLUSTER_ID=Kubernetes",
		"DEBUG_ENDPOINT_AUTH_ALLOWED_NAMESPACES=wasme",
	}
}

func startIstiod(ctx context.Context, bin, dir, kubeconfig, version string) (*Istiod, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	caPEM, certFile, keyFile, caFile, err := writeIstiodTLS(dir)
	if err != nil {
		return nil, err
	}
	var lastErr error
	// Ports are picked free and then handed to istiod, which may lose a race for one of them.
	for attempt := 0; attempt < 3; attempt++ {
		var addrs [4]string
		for i := range addrs {
			a, err := proc.FreeAddr()
			if err != nil {
				return nil, err
			}
			addrs[i] = a
		}
		httpAddr, grpcAddr, monAddr, secureAddr := addrs[0], addrs[1], addrs[2], addrs[3]
		mesh := filepath.Join(dir, "mesh.yaml")
		// The smallest mesh config: where proxies find istiod, and the root namespace.
		meshCfg := fmt.Sprintf("rootNamespace: istio-system\ntrustDomain: cluster.local\ndefaultConfig:\n  discoveryAddress: %s\n", grpcAddr)
		if err := os.WriteFile(mesh, []byte(meshCfg), 0o644); err != nil {
			return nil, err
		}
		args := []string{
			"discovery",
			"--kubeconfig", kubeconfig,
			"--meshConfig", mesh,
			// No file: istiod then uses empty mesh networks (one network).
			"--networksConfig", filepath.Join(dir, "mesh-networks.yaml"),
			"--namespace", "istio-system",
			"--domain", "cluster.local",
			"--clusterID", "Kubernetes",
			"--httpAddr", httpAddr,
			// Webhooks are served on httpAddr when there is no HTTPS address.
			"--httpsAddr", "",
			"--grpcAddr", grpcAddr,
			// Secure xDS with the harness's certificate (istiod's own CA stays off): the test
			// proxies use the plaintext port, the operator's proxy tracking this one.
			"--secureGRPCAddr", secureAddr,
			"--tlsCertFile", certFile, "--tlsKeyFile", keyFile, "--caCertFile", caFile,
			"--monitoringAddr", monAddr,
			"--ctrlz_address", "127.0.0.1", "--ctrlz_port", "0",
			"--shutdownDuration", "1s",
			"--log_output_level", "default:info",
		}
		p, err := proc.Start("istiod", bin, args, filepath.Join(dir, "istiod.log"), proc.Options{Dir: dir, Env: istiodEnv(kubeconfig)})
		if err != nil {
			return nil, err
		}
		lastErr = p.WaitHTTP(ctx, &http.Client{Timeout: 2 * time.Second}, "http://"+httpAddr+"/ready", 3*time.Minute, nil)
		if lastErr == nil {
			return &Istiod{XDSAddr: grpcAddr, SecureXDSAddr: secureAddr, CAPEM: caPEM, MonitoringAddr: monAddr, HTTPAddr: httpAddr, Version: version, LogFile: p.LogPath, proc: p}, nil
		}
		p.Stop()
		if !strings.Contains(lastErr.Error(), "address already in use") {
			break
		}
	}
	return nil, fmt.Errorf("istiod did not become ready: %w", lastErr)
}

// Stop stops istiod.
func (i *Istiod) Stop() {
	if i != nil {
		i.proc.Stop()
	}
}

// LogTail is the end of istiod's log, for failure messages.
func (i *Istiod) LogTail(lines int) string { return i.proc.LogTail(lines) }
