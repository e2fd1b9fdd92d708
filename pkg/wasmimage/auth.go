package wasmimage

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"oras.land/oras-go/v2/registry/remote/auth"

	"oras.land/oras-go/v2/registry/remote/credentials"
)

// CredentialStoreFromDockerConfigJSON turns the bytes of a docker config.json, as held by a
// kubernetes.io/dockerconfigjson Secret under .dockerconfigjson, into an in-memory credential
// store. The legacy kubernetes.io/dockercfg form (the bare map of servers, key .dockercfg) is
// accepted too. Server keys may be host names or URLs ("https://index.docker.io/v1/").
func CredentialStoreFromDockerConfigJSON(data []byte) (credentials.Store, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, fmt.Errorf("docker config JSON: %w", err)
	}
	if _, ok := probe["auths"]; !ok {
		wrapped, err := json.Marshal(map[string]map[string]json.RawMessage{"auths": probe})
		if err != nil {
			return nil, err
		}
		data = wrapped
	}
	s, err := credentials.NewMemoryStoreFromDockerConfig(data)
	if err != nil {
		return nil, fmt.Errorf("docker config JSON: %w", err)
	}
	return hostAliasStore{s}, nil
}

// hostAliasStore looks a server up under every name docker and Kubernetes use for it: the
// memory store keys by bare host name while lookups come as "https://index.docker.io/v1/".
type hostAliasStore struct{ credentials.Store }

func (s hostAliasStore) Get(ctx context.Context, serverAddress string) (auth.Credential, error) {
	for _, k := range serverAliases(serverAddress) {
		c, err := s.Store.Get(ctx, k)
		if err != nil || c != auth.EmptyCredential {
			return c, err
		}
	}
	return auth.EmptyCredential, nil
}

func serverAliases(addr string) []string {
	host := strings.TrimPrefix(strings.TrimPrefix(addr, "https://"), "http://")
	host, _, _ = strings.Cut(host, "/")
	out := []string{addr}
	if host != addr {
		out = append(out, host)
	}
	switch host {
	case "index.docker.io", "docker.io", "registry-1.docker.io":
		out = append(out, "index.docker.io", "docker.io", "registry-1.docker.io")
	}
	return out
}
