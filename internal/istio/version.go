// Package istio holds the pure parts of wasme's Istio support: which Istio version a cluster
// runs, and the EnvoyFilter that puts a Wasm filter into a workload's sidecar for that version.
package istio

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"

	"wasme.io/wasme/pkg/wasmimage"
)

// Version is an Istio minor version. The patch level never changes the EnvoyFilter shape.
type Version struct {
	Major, Minor int
}

func (v Version) String() string { return fmt.Sprintf("%d.%d", v.Major, v.Minor) }

// Less orders versions.
func (v Version) Less(o Version) bool {
	return cmp.Or(cmp.Compare(v.Major, o.Major), cmp.Compare(v.Minor, o.Minor)) < 0
}

// Current is assumed when a version cannot be told (an image tag such as "latest" or a digest):
// clusters that hide their version run recent builds far more often than 1.5.
var Current = Version{1, 30}

var versionRE = regexp.MustCompile(`^v?(\d+)\.(\d+)`)

// ParseVersion reads "1.5.6", "1.24", "v1.7.0-distroless" and the like.
func ParseVersion(s string) (Version, error) {
	m := versionRE.FindStringSubmatch(s)
	if m == nil {
		return Version{}, fmt.Errorf("%q is not an Istio version such as 1.24.2", s)
	}
	major, err1 := strconv.Atoi(m[1])
	minor, err2 := strconv.Atoi(m[2])
	if err1 != nil || err2 != nil {
		return Version{}, fmt.Errorf("%q is not an Istio version such as 1.24.2", s)
	}
	return Version{major, minor}, nil
}

// IstiodSelector is the label Istio puts on every istiod Deployment, revisioned or not.
const IstiodSelector = "app"

// IsIstiod tells whether a Deployment runs istiod: the default "istiod" or a revision such as
// "istiod-1-24".
func IsIstiod(d *appsv1.Deployment) bool {
	return d.Name == "istiod" || strings.HasPrefix(d.Name, "istiod-") || d.Labels[IstiodSelector] == "istiod"
}

// DetectVersion tells the Istio version from the istiod Deployments of one namespace. With
// several revisions the newest wins, since EnvoyFilters are shared by all of them and newer
// proxies are the stricter readers. The version comes from the discovery container's image tag,
// else from the version labels Istio's installers set; when neither tells, Current is assumed
// and known is false. It returns an error only when there is no istiod at all.
func DetectVersion(deployments []appsv1.Deployment) (v Version, known bool, err error) {
	var found []Version
	istiods := 0
	for i := range deployments {
		d := &deployments[i]
		if !IsIstiod(d) {
			continue
		}
		istiods++
		if dv, ok := deploymentVersion(d); ok {
			found = append(found, dv)
		}
	}
	if istiods == 0 {
		return Version{}, false, fmt.Errorf("no istiod Deployment found")
	}
	if len(found) == 0 {
		return Current, false, nil
	}
	return slices.MaxFunc(found, func(a, b Version) int {
		if a.Less(b) {
			return -1
		}
		if b.Less(a) {
			return 1
		}
		return 0
	}), true, nil
}

func deploymentVersion(d *appsv1.Deployment) (Version, bool) {
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Name != "discovery" {
			continue
		}
		if v, err := ParseVersion(imageTag(c.Image)); err == nil {
			return v, true
		}
	}
	for _, labels := range []map[string]string{d.Labels, d.Spec.Template.Labels} {
		for _, k := range []string{"operator.istio.io/version", "app.kubernetes.io/version", "istio.io/version"} {
			if v, err := ParseVersion(labels[k]); err == nil {
				return v, true
			}
		}
	}
	return Version{}, false
}

// imageTag is the tag of an image reference: "" for a digest alone or a reference that does
// not parse, "latest" (no version either) when it names neither.
func imageTag(image string) string {
	r, err := wasmimage.ParseReference(image)
	if err != nil {
		return ""
	}
	return r.Tag
}
