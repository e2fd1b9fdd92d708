package wasmhost

import (
	"context"

	"github.com/tetratelabs/wazero"
)

// Cache holds compiled modules so that validating a module and then running it, or running
// it in several plugins, compiles it once. It is keyed by the module's hash and never evicts;
// close it when done.
type Cache struct{ cc wazero.CompilationCache }

// NewCache returns an empty in-memory compilation cache.
func NewCache() *Cache { return &Cache{cc: wazero.NewCompilationCache()} }

// Close releases the cached code.
func (c *Cache) Close(ctx context.Context) error { return c.cc.Close(ctx) }
