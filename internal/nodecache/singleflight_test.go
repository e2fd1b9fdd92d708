package nodecache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/go-logr/logr/testr"
	"k8s.io/client-go/rest"
)

// blockingSource serves one module once released, honouring its context as the operator
// source's HTTP request does.
type blockingSource struct {
	module  []byte
	release chan struct{}
	calls   atomic.Int32
}

func (s *blockingSource) Fetch(ctx context.Context, _ string) (io.ReadCloser, error) {
	s.calls.Add(1)
	select {
	case <-s.release:
		return io.NopCloser(bytes.NewReader(s.module)), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TestCancelledWorkerHandsOverItsDownload: a fetch whose caller is cancelled (the module
// stopped being needed) keeps downloading for the caller that needs it next; that caller gets
// the module, not the first caller's "context canceled", and the source is asked once.
func TestCancelledWorkerHandsOverItsDownload(t *testing.T) {
	mod := wasmModule("handover")
	src := &blockingSource{module: mod, release: make(chan struct{})}
	d, err := New(Options{Dir: t.TempDir(), NodeName: "handover", Config: &rest.Config{}, Source: src, Log: testr.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	if d.store, _, err = OpenStore(d.opts.Dir); err != nil {
		t.Fatal(err)
	}
	d.runCtx = context.Background()
	h := hexOf(mod)

	first, cancelFirst := context.WithCancel(context.Background())
	firstDone := make(chan error, 1)
	go func() { _, err := d.fetchOnce(first, h); firstDone <- err }()
	for src.calls.Load() == 0 { // the download has started once the source is asked
		runtime.Gosched()
	}
	cancelFirst()
	if err := <-firstDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("the cancelled caller got %v, want context.Canceled", err)
	}
	secondDone := make(chan error, 1)
	var size int64
	go func() {
		var err error
		size, err = d.fetchOnce(context.Background(), h)
		secondDone <- err
	}()
	close(src.release)
	if err := <-secondDone; err != nil {
		t.Fatalf("the next caller got %v, want the module", err)
	}
	if size != int64(len(mod)) {
		t.Errorf("size %d, want %d", size, len(mod))
	}
	if n := src.calls.Load(); n != 1 {
		t.Errorf("the source was asked %d times, want once", n)
	}
	if got, ok := d.store.Has(h); !ok || got != int64(len(mod)) {
		t.Errorf("store.Has = %d, %v", got, ok)
	}
}
