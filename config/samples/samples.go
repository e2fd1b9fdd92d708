// Package samples embeds the sample objects of config/samples, so tests and the demo apply
// exactly what users read.
package samples

import (
	_ "embed"
	"strings"
)

//go:embed bookinfo-custom-filter.yaml
var bookinfoCustomFilter string

// SampleRegistry is the registry host the samples name.
const SampleRegistry = "registry.example.com"

// BookinfoCustomFilter is the seed article's FilterDeployment with its image in the registry
// at host (the article's registry is the only difference).
func BookinfoCustomFilter(host string) string {
	return strings.ReplaceAll(bookinfoCustomFilter, SampleRegistry, host)
}
