module wasme.io/wasme/examples/filters

// A module of its own so that the main module's `go vet ./...` and `go test ./...`, which run
// for the host platform, never try to build these GOOS=wasip1 programs.
go 1.26.0
