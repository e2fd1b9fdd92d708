package cacheprotocol

import (
	"context"
	"fmt"

	"sigs.k8s.io/controller-runtime/pkg/client"

	wasmev1 "wasme.io/wasme/api/v1"
)

// Field indexes of FilterDeployments by the digests their status names. Every module request
// looks its digest up in them, so it costs the FilterDeployments that name the digest rather
// than a copy of every FilterDeployment of the cluster.
const (
	ModuleDigestIndex         = "wasme.io/status.moduleDigest"
	DeployedModuleDigestIndex = "wasme.io/status.deployedModuleDigest"
)

// IndexFilterDeployments registers the indexes with fi (a manager's field indexer, or a cache):
// the reader given to the Server as Options.Client must have them.
func IndexFilterDeployments(ctx context.Context, fi client.FieldIndexer) error {
	for index, field := range map[string]func(*wasmev1.FilterDeploymentStatus) string{
		ModuleDigestIndex:         func(s *wasmev1.FilterDeploymentStatus) string { return s.ModuleDigest },
		DeployedModuleDigestIndex: func(s *wasmev1.FilterDeploymentStatus) string { return s.DeployedModuleDigest },
	} {
		if err := fi.IndexField(ctx, &wasmev1.FilterDeployment{}, index, func(o client.Object) []string {
			fd, ok := o.(*wasmev1.FilterDeployment)
			if !ok || field(&fd.Status) == "" {
				return nil
			}
			return []string{field(&fd.Status)}
		}); err != nil {
			return fmt.Errorf("indexing FilterDeployments by %s: %w", index, err)
		}
	}
	return nil
}
