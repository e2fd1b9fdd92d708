package istio

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func istiod(name, image string, labels map[string]string) appsv1.Deployment {
	d := appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	d.Spec.Template.Spec.Containers = []corev1.Container{{Name: "discovery", Image: image}}
	return d
}

func TestDetectVersion(t *testing.T) {
	cases := []struct {
		name      string
		deps      []appsv1.Deployment
		want      Version
		wantKnown bool
		wantErr   bool
	}{
		{"seed's 1.5.6", []appsv1.Deployment{istiod("istiod", "registry.example.com/istio/pilot:1.5.6", nil)}, Version{1, 5}, true, false},
		{"registry with port", []appsv1.Deployment{istiod("istiod", "localhost:5000/istio/pilot:1.7.1", nil)}, Version{1, 7}, true, false},
		{"distroless suffix", []appsv1.Deployment{istiod("istiod", "istio/pilot:1.24.2-distroless", nil)}, Version{1, 24}, true, false},
		{"latest falls back to current", []appsv1.Deployment{istiod("istiod", "istio/pilot:latest", nil)}, Current, false, false},
		{"no tag", []appsv1.Deployment{istiod("istiod", "istio/pilot", nil)}, Current, false, false},
		{"tag without dots", []appsv1.Deployment{istiod("istiod", "istio/pilot:1", nil)}, Current, false, false},
		{"digest only", []appsv1.Deployment{istiod("istiod", "istio/pilot@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", nil)}, Current, false, false},
		{"digest, version label", []appsv1.Deployment{istiod("istiod", "istio/pilot@sha256:01234567", map[string]string{"app.kubernetes.io/version": "1.22.0"})}, Version{1, 22}, true, false},
		{"revisioned", []appsv1.Deployment{istiod("istiod-1-24", "istio/pilot:1.24.1", nil)}, Version{1, 24}, true, false},
		{"two revisions, newest wins", []appsv1.Deployment{istiod("istiod-1-23", "istio/pilot:1.23.0", nil), istiod("istiod-1-24", "istio/pilot:1.24.0", nil)}, Version{1, 24}, true, false},
		{"by label", []appsv1.Deployment{istiod("pilot", "istio/pilot:1.6.0", map[string]string{"app": "istiod"})}, Version{1, 6}, true, false},
		{"no istiod", []appsv1.Deployment{istiod("details-v1", "details:1.0", nil)}, Version{}, false, true},
		{"nothing", nil, Version{}, false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, known, err := DetectVersion(tc.deps)
			if (err != nil) != tc.wantErr || got != tc.want || known != tc.wantKnown {
				t.Errorf("DetectVersion = %v, %v, %v; want %v, %v, error %v", got, known, err, tc.want, tc.wantKnown, tc.wantErr)
			}
		})
	}
}

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]Version{"1.5": {1, 5}, "1.24.2": {1, 24}, "v1.7.0": {1, 7}, "1.10.0-beta.1": {1, 10}} {
		if got, err := ParseVersion(in); err != nil || got != want {
			t.Errorf("ParseVersion(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "latest", "1", "a.b", "99999999999999999999.1"} {
		if _, err := ParseVersion(in); err == nil {
			t.Errorf("ParseVersion(%q) succeeded", in)
		}
	}
}
