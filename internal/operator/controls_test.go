package operator_test

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"testing"

	apinetworking "istio.io/api/networking/v1alpha3"
	"k8s.io/utils/ptr"

	wasmev1 "wasme.io/wasme/api/v1"
)

// chain is the HTTP filter order istiod builds from a workload's EnvoyFilters: applied by
// ascending priority, each inserting first in the chain or before the router.
func chain(cl *cluster, ns string) []string {
	type applied struct {
		prio int32
		name string
		op   apinetworking.EnvoyFilter_Patch_Operation
	}
	var all []applied
	for name, ef := range cl.envoyFilters(ns) {
		all = append(all, applied{ef.Spec.Priority, name, ef.Spec.ConfigPatches[0].GetPatch().GetOperation()})
	}
	slices.SortFunc(all, func(a, b applied) int { return cmp.Compare(a.prio, b.prio) })
	var head, tail []string
	for _, a := range all {
		if a.op == apinetworking.EnvoyFilter_Patch_INSERT_FIRST {
			head = append([]string{a.name}, head...)
		} else {
			tail = append(tail, a.name)
		}
	}
	return append(append(head, "|"), tail...)
}

// Phase and priority decide the order of FilterDeployments on a workload, whatever order they
// were created in; one that ties with another on both is placed by name, and its arrival moves
// the one it ties with; fail strategy and env reach the filter config.
func TestOrderAndControls(t *testing.T) {
	cl := setup(t, currentIstiod)
	ref := cl.push("filters/custom-header:v1", customHeader(t))
	ns := env.Namespace(t)
	cl.apply(deployment(ns, "app", map[string]string{"app": "app"}, nil))
	phase := func(p wasmev1.Phase, prio int32) func(*wasmev1.FilterDeployment) {
		return func(fd *wasmev1.FilterDeployment) { fd.Spec.Filter.Phase, fd.Spec.Filter.Priority = p, ptr.To(prio) }
	}
	// Created last-first.
	for _, fd := range []*wasmev1.FilterDeployment{
		newFD(ns, "c-unspecified", ref, phase("", 0), func(fd *wasmev1.FilterDeployment) {
			fd.Spec.Filter.FailStrategy = wasmev1.FailOpen
			fd.Spec.Filter.VMConfig = &wasmev1.VMConfig{Env: []wasmev1.EnvVar{{Name: "GREETING", Value: "hi"}, {Name: "POD_NAME", ValueFrom: wasmev1.EnvHost}}}
		}),
		newFD(ns, "b-stats", ref, phase(wasmev1.PhaseStats, -3)),
		newFD(ns, "z-authn-high", ref, phase(wasmev1.PhaseAuthN, 10)),
		newFD(ns, "a-authn-low", ref, phase(wasmev1.PhaseAuthN, -10)),
	} {
		cl.apply(fd)
		cl.waitReady(fd)
	}
	want := []string{"app-z-authn-high." + ns, "app-a-authn-low." + ns, "|", "app-b-stats." + ns, "app-c-unspecified." + ns}
	if got := chain(cl, ns); !slices.Equal(got, want) {
		t.Errorf("chain %v, want %v", got, want)
	}
	spec := specJSON(t, cl.envoyFilters(ns)["app-c-unspecified."+ns])
	for _, s := range []string{`"failurePolicy":"FAIL_OPEN"`, `"hostEnvKeys":["POD_NAME"]`, `"keyValues":{"GREETING":"hi"}`} {
		if !strings.Contains(spec, s) {
			t.Errorf("c-unspecified's EnvoyFilter lacks %s: %s", s, spec)
		}
	}

	// A newcomer tying with c-unspecified (same phase and priority) but before it by name.
	tie := newFD(ns, "a-unspecified", ref)
	cl.apply(tie)
	cl.waitReady(tie)
	want = slices.Insert(want, 4, "app-a-unspecified."+ns)
	cl.eventually("the tie broken by name", func() (bool, string) {
		got := chain(cl, ns)
		return slices.Equal(got, want), fmt.Sprintf("chain %v, want %v", got, want)
	})
	// ... and its departure gives c-unspecified its old place back.
	before := cl.envoyFilters(ns)["app-c-unspecified."+ns].Spec.Priority
	cl.waitGone(tie)
	cl.eventually("c-unspecified moved back", func() (bool, string) {
		p := cl.envoyFilters(ns)["app-c-unspecified."+ns].Spec.Priority
		return p == before-1, fmt.Sprintf("priority %d, was %d with the tie", p, before)
	})
}

// What the detected Istio cannot express stalls before any workload is touched.
func TestControlsOnOldIstioStall(t *testing.T) {
	for name, tc := range map[string]struct {
		istiod string
		mutate func(*wasmev1.FilterDeployment)
		want   string
	}{
		"FailReload on Istio 1.22": {"registry.example.com/istio/pilot:1.22.3", func(fd *wasmev1.FilterDeployment) { fd.Spec.Filter.FailStrategy = wasmev1.FailReload }, "FailReload needs Istio 1.23 or later"},
		"AUTHN on Istio 1.5":       {"registry.example.com/istio/pilot:1.5.6", func(fd *wasmev1.FilterDeployment) { fd.Spec.Filter.Phase = wasmev1.PhaseAuthN }, "phase AUTHN needs Istio 1.10 or later"},
	} {
		t.Run(name, func(t *testing.T) {
			cl := setup(t, tc.istiod)
			ref := cl.push("filters/custom-header:v1", customHeader(t))
			ns := env.Namespace(t)
			cl.apply(deployment(ns, "app", map[string]string{"app": "app"}, nil))
			cl.apply(newFD(ns, "f", ref, tc.mutate))
			cl.eventually("Stalled", func() (bool, string) {
				fd := cl.fd(ns, "f")
				for _, c := range fd.Status.Conditions {
					if c.Type == wasmev1.StalledCondition && c.Reason == wasmev1.InvalidSpecReason && strings.Contains(c.Message, tc.want) {
						return true, ""
					}
				}
				return false, fmt.Sprintf("%+v", fd.Status.Conditions)
			})
			if efs := cl.envoyFilters(ns); len(efs) != 0 {
				t.Errorf("EnvoyFilters = %v", keys(efs))
			}
			if d := cl.deployment(ns, "app"); d.Generation != 1 {
				t.Errorf("workload generation %d, want 1", d.Generation)
			}
		})
	}
}
