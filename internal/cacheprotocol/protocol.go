// Package cacheprotocol is the node cache protocol (docs/design/node-cache-protocol.md) in one
// place: the paths and headers both sides agree on, the operator's module server (Server, which
// serves Wasm modules by sha256 to the node cache daemons, so nodes never hold registry
// credentials and the registry sees one pull per digest per operator replica instead of one per
// node) and the node side's Client.
//
// What serves modules to Envoy on a node is not this protocol but internal/nodecache's server.
//
// The operator creates one Server with New, adds it to its manager (every replica serves, so it
// does not need leader election), and calls Put after each pull of its own. A replica asked for
// a digest it has not pulled calls Options.Fetch with a FilterDeployment that names the digest.
package cacheprotocol

import (
	"strings"
)

const (
	// Port is the module port (Service wasme-operator, port "modules").
	Port = "9980"
	// PathPrefix is where modules are served: PathPrefix + "<64 hex>" (ModulePath).
	PathPrefix = "/modules/sha256/"
	// DefaultAllowedUser is the node cache daemons' ServiceAccount.
	DefaultAllowedUser = "system:serviceaccount:wasme:wasme-cache"
	// Audience is the audience of the projected ServiceAccount token a node cache presents.
	// A token of its own audience, not the API server's, so that the module server cannot
	// replay it against the API server and a pod's default token does not fetch modules.
	Audience = "wasme-cache"
	// MaxTokenBytes is the largest bearer token the module server sends to a TokenReview;
	// ServiceAccount tokens are about 1 KiB.
	MaxTokenBytes = 16 << 10
	// ContentType is the media type of a served module.
	ContentType = "application/wasm"
	// userAgentPrefix and userAgentSuffix frame the node name in the daemon's User-Agent, so the
	// operator's logs tell the nodes apart.
	userAgentPrefix = "wasme-cache (node "
	userAgentSuffix = ")"
)

// ModulePath is the path of the module whose sha256 is hexDigest.
func ModulePath(hexDigest string) string { return PathPrefix + hexDigest }

// DigestOf returns the hex digest a module path names, and false for a path outside PathPrefix.
// The digest is not checked.
func DigestOf(path string) (string, bool) { return strings.CutPrefix(path, PathPrefix) }

// UserAgent is the User-Agent the node cache of nodeName sends.
func UserAgent(nodeName string) string { return userAgentPrefix + nodeName + userAgentSuffix }

// NodeOf returns the node name in a User-Agent a node cache sent, and false for another one.
// It is for logs and tests: the User-Agent is not authenticated.
func NodeOf(userAgent string) (string, bool) {
	rest, ok := strings.CutPrefix(userAgent, userAgentPrefix)
	if !ok {
		return "", false
	}
	return strings.CutSuffix(rest, userAgentSuffix)
}
