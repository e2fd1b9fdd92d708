package validation_test

import (
	"context"
	"testing"

	"wasme.io/wasme/internal/testing/wasmbuild"
	"wasme.io/wasme/internal/validation"
)

// BenchmarkValidate runs whole validations in the child with the operator's default limits:
// the seed's filter, and the hostile modules (the start loop takes the whole time budget).
// Peak RSS is the child's VmHWM.
//
//	go test ./internal/validation -run '^$' -bench Validate -benchtime 1x
func BenchmarkValidate(b *testing.B) {
	cases := []struct {
		name   string
		module []byte
	}{
		{"custom-header", wasmbuild.ExampleT(b, "custom-header")},
		{"no-memory-tick-trap", wasmbuild.NoMemoryTickTrap()},
		{"start-loop", wasmbuild.StartLoop()},
		{"shared-data-flood", wasmbuild.SharedDataFlood(1024, 1024)},
		{"queue-flood", wasmbuild.QueueFlood(20000)},
		{"huge-table", wasmbuild.HugeTable(1 << 27)},
	}
	r, err := validation.NewRunner("", validation.Limits{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var peak uint64
			for b.Loop() {
				res := r.Run(context.Background(), c.module, "", nil)
				peak = max(peak, res.MaxRSS)
			}
			b.ReportMetric(float64(peak)/(1<<20), "peakRSS-MiB")
		})
	}
}
