package wasmimage_test

import (
	"context"
	"testing"

	"wasme.io/wasme/internal/testing/wasmbuild"
	"wasme.io/wasme/pkg/wasmimage"
)

// BenchmarkValidateModule measures the compile check the operator runs once per new digest.
func BenchmarkValidateModule(b *testing.B) {
	module := wasmbuild.ExampleT(b, "custom-header")
	b.SetBytes(int64(len(module)))
	for b.Loop() {
		if _, err := wasmimage.ValidateModule(context.Background(), module); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPackCompat measures building the compat layer (tar + gzip).
func BenchmarkPackCompat(b *testing.B) {
	module := wasmbuild.ExampleT(b, "custom-header")
	b.SetBytes(int64(len(module)))
	for b.Loop() {
		if _, err := wasmimage.Pack(module, seedConfig, wasmimage.LayoutCompat); err != nil {
			b.Fatal(err)
		}
	}
}
