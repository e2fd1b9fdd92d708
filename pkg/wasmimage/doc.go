// Package wasmimage reads and writes WebAssembly filter images in OCI registries.
//
// It reads every layout in use for proxy-wasm filters: wasme's OCI variant (a runtime-config
// blob and one raw wasm layer), the compat variant (a tar+gzip layer holding plugin.wasm), the
// wasm-to-oci and CNCF Wasm artifact layouts, a manifest with a single raw wasm layer, and an
// image index that points at one of these. It writes wasme's variant by default, because the
// Istio, Envoy Gateway and Higress fetchers accept it, and the compat or CNCF layouts on request.
//
// Every image carries two digests that must not be confused: the manifest digest (what a
// registry and a pinned reference name) and the module digest, the sha256 of the .wasm bytes
// (what the node cache and Envoy's file path use).
//
// Transport is oras-go v2: docker credential stores, bearer and basic auth, custom CAs, bounded
// retries with backoff on 5xx and network errors, and a size limit enforced while reading.
package wasmimage
