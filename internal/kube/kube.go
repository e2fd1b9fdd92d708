// Package kube holds what every wasme process that talks to Kubernetes shares: the scheme of
// the types it reads and writes, and how it finds its cluster.
package kube

import (
	"fmt"

	networkingv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/client/config"

	wasmev1 "wasme.io/wasme/api/v1"
)

// Scheme has the built-in, CRD, wasme and Istio networking types.
func Scheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		clientgoscheme.AddToScheme, apiextensionsv1.AddToScheme, wasmev1.AddToScheme, networkingv1alpha3.AddToScheme,
	} {
		if err := add(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Config is the cluster to talk to: the given kubeconfig file, else the in-cluster config,
// $KUBECONFIG or ~/.kube/config, as kubectl finds them.
func Config(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("reading kubeconfig %s: %w", kubeconfig, err)
		}
		// Like GetConfig below: no client-side throttle, the API server's priority and fairness
		// decides. client-go's default of 5 QPS would make `wasme operator --kubeconfig` take
		// 400 s for the 2,000 writes of a 1,000-workload rollout (make bench, row 2).
		if cfg.QPS == 0 {
			cfg.QPS = -1
		}
		return cfg, nil
	}
	cfg, err := ctrlconfig.GetConfig()
	if err != nil {
		return nil, fmt.Errorf("finding the cluster: %w", err)
	}
	return cfg, nil
}
