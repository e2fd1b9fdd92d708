package cli

import (
	"context"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	wasmev1 "wasme.io/wasme/api/v1"
)

// TestStatusRefusals: bad command lines fail with one clear line before reaching a cluster.
func TestStatusRefusals(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"status", "a", "b"}, "accepts at most 1 arg"},
		{[]string{"status", "a", "-A"}, "--all-namespaces lists every FilterDeployment"},
		{[]string{"status", "-o", "xml"}, "want table, json or yaml"},
	} {
		var out, errOut strings.Builder
		err := Run(context.Background(), tc.args, &out, &errOut)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("wasme %v: %v, want an error with %q", tc.args, err, tc.want)
		}
	}
}

// TestStatusTable: the table shows the conditions, each workload's proxies and each pod that
// does not run the filter on one line, whatever its message holds.
func TestStatusTable(t *testing.T) {
	fd := &wasmev1.FilterDeployment{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "f", Generation: 2}}
	fd.Spec.Filter.Image = "registry.example.com/f:v1"
	fd.Status = wasmev1.FilterDeploymentStatus{
		ObservedGeneration: 2, ProxiesProgrammed: "1/2", Delivery: wasmev1.DeliveryMount,
		Conditions: []metav1.Condition{
			{Type: wasmev1.ReadyCondition, Status: metav1.ConditionTrue, Reason: wasmev1.SucceededReason},
			{Type: wasmev1.ProgrammedCondition, Status: metav1.ConditionFalse, Reason: wasmev1.ProxyRejectedReason},
		},
		Workloads: map[string]wasmev1.WorkloadStatus{
			"web": {State: wasmev1.WorkloadSucceeded, Proxies: "1/2", NotProgrammed: []wasmev1.PodProxyStatus{
				{Pod: "web-1", State: wasmev1.ProxyRejected, Message: "line one\n\tline two"},
			}},
		},
	}
	var b strings.Builder
	if err := printStatusTable(&b, filterStatusOf(fd)); err != nil {
		t.Fatal(err)
	}
	got := b.String()
	flat := strings.Join(strings.Fields(got), " ")
	for _, want := range []string{"ns/f", "ready: True (Succeeded)", "programmed: False (ProxyRejected), proxies 1/2", "web Succeeded 1/2",
		"web-1 Rejected line one; line two"} {
		if !strings.Contains(flat, want) {
			t.Errorf("table lacks %q:\n%s", want, got)
		}
	}
	if strings.Count(got, "\n") != 10 {
		t.Errorf("table has %d lines, want 10 (name, six fields, column header, workload, pod):\n%s", strings.Count(got, "\n"), got)
	}
}
