package wasmimage_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"wasme.io/wasme/internal/testing/registry"
	"wasme.io/wasme/internal/testing/wasmbuild"
	"wasme.io/wasme/pkg/wasmimage"
)

// progressLog records what a Progress was told, per layer.
type progressLog struct {
	mu    sync.Mutex
	calls map[digest.Digest][]int64
	descs map[digest.Digest]ocispec.Descriptor
}

func (l *progressLog) report(d ocispec.Descriptor, done int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.calls == nil {
		l.calls, l.descs = map[digest.Digest][]int64{}, map[digest.Digest]ocispec.Descriptor{}
	}
	l.calls[d.Digest] = append(l.calls[d.Digest], done)
	l.descs[d.Digest] = d
}

// check wants exactly one layer, of mediaType, reported in more than minCalls rising steps up to
// its size.
func (l *progressLog) check(t *testing.T, what, mediaType string, minCalls int) {
	t.Helper()
	if len(l.calls) != 1 {
		t.Fatalf("%s: progress for %d blobs, want the one layer: %v", what, len(l.calls), l.descs)
	}
	for dg, calls := range l.calls {
		d := l.descs[dg]
		if d.MediaType != mediaType {
			t.Errorf("%s: progress for a %s, want the %s layer", what, d.MediaType, mediaType)
		}
		if len(calls) < minCalls || calls[len(calls)-1] != d.Size {
			t.Errorf("%s: %d calls ending at %d of %d bytes, want at least %d ending at the size", what, len(calls), calls[len(calls)-1], d.Size, minCalls)
		}
		for i := 1; i < len(calls); i++ {
			if calls[i] <= calls[i-1] {
				t.Fatalf("%s: progress went from %d to %d", what, calls[i-1], calls[i])
			}
		}
	}
}

// A module of a few MiB, pushed to and pulled from a real registry, is reported as it moves:
// rising steps of its one layer up to its size; a second push of the same layer (the registry
// has it) reports it once, done.
func TestProgress(t *testing.T) {
	reg := registry.StartT(t, registry.Options{})
	pad := make([]byte, 4<<20)
	_, _ = rand.Read(pad)
	module := wasmbuild.WithCustomSection(wasmbuild.MinimalFilter(), "padding", pad)
	ref := reg.Host + "/filters/big:v1"
	ctx := context.Background()

	var pushed progressLog
	if _, err := wasmimage.Push(ctx, ref, module, wasmimage.RuntimeConfig{}, plain, wasmimage.WithProgress(pushed.report)); err != nil {
		t.Fatal(err)
	}
	pushed.check(t, "push", wasmimage.MediaTypeWasmeContentLayer, 10)

	var pulled progressLog
	img, err := wasmimage.Pull(ctx, ref, plain, wasmimage.WithProgress(pulled.report))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(img.Module, module) {
		t.Fatal("pulled module differs")
	}
	pulled.check(t, "pull", wasmimage.MediaTypeWasmeContentLayer, 2)

	var again progressLog
	// Another config, so another manifest: the layer alone is already there.
	if _, err := wasmimage.Push(ctx, reg.Host+"/filters/big:v2", module, wasmimage.RuntimeConfig{RootIDs: []string{"other"}}, plain, wasmimage.WithProgress(again.report)); err != nil {
		t.Fatal(err)
	}
	again.check(t, "push of a layer the registry has", wasmimage.MediaTypeWasmeContentLayer, 1)
	for _, calls := range again.calls {
		if len(calls) != 1 {
			t.Errorf("a layer the registry has was reported %d times: %v", len(calls), calls)
		}
	}

	// The compat layout reports its tar+gzip layer.
	var compat progressLog
	if _, err := wasmimage.Push(ctx, reg.Host+"/filters/big-compat:v1", module, wasmimage.RuntimeConfig{}, plain,
		wasmimage.WithLayout(wasmimage.LayoutCompat), wasmimage.WithProgress(compat.report)); err != nil {
		t.Fatal(err)
	}
	compat.check(t, "compat push", wasmimage.MediaTypeOCILayerTarGzip, 2)
}
