# wasme: build, test and release targets, named as in a kubebuilder project.

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

# Pinned tools are built from hack/tools/<tool>/go.mod into this cache, once per pin.
export WASME_TOOLS_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/wasme-tools
TOOL = $(shell hack/tools/build.sh $(1))

VERSION ?= dev
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X wasme.io/wasme/internal/cli.Version=$(VERSION) -X wasme.io/wasme/internal/cli.Commit=$(COMMIT)
GO_TEST_FLAGS ?=

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  %-16s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: ## Generate the CRD and one RBAC role per component from the code's markers.
	$(call TOOL,controller-gen) crd paths=./api/... output:crd:artifacts:config=config/crd/bases
	$(call TOOL,controller-gen) rbac:roleName=wasme-operator paths=./internal/operator/... output:rbac:artifacts:config=config/rbac/operator
	$(call TOOL,controller-gen) rbac:roleName=wasme-cache paths=./internal/nodecache/... output:rbac:artifacts:config=config/rbac/cache

.PHONY: generate
generate: ## Generate deepcopy code and apply configurations (api/v1/applyconfiguration) for the API types, and docs/cli.md from the command tree.
	$(call TOOL,controller-gen) object:headerFile=hack/boilerplate.go.txt paths=./api/...
	rm -rf api/v1/applyconfiguration
	$(call TOOL,controller-gen) applyconfiguration:headerFile=hack/boilerplate.go.txt paths=./api/...
	go run ./hack/clidoc -out docs/cli.md

.PHONY: build-installer
build-installer: manifests $(if $(IMAGE),image) ## Render deploy/crds.yaml and deploy/wasme.yaml; with IMAGE=..., pinned to the pushed digest; the generated parts of charts/wasme.
	@mkdir -p deploy
	$(call TOOL,kustomize) build config/crd > deploy/crds.yaml.tmp && mv deploy/crds.yaml.tmp deploy/crds.yaml
ifeq ($(IMAGE),)
	$(call TOOL,kustomize) build config/default > deploy/wasme.yaml.tmp && mv deploy/wasme.yaml.tmp deploy/wasme.yaml
	go run ./hack/chartgen
else
	@# An overlay of config/default whose only change is the image, pinned to what make image pushed.
	rm -rf bin/installer && mkdir -p bin/installer
	printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- ../../config/default\n' > bin/installer/kustomization.yaml
	cd bin/installer && $(call TOOL,kustomize) edit set image wasme=$$(cat ../wasme-image.ref)
	$(call TOOL,kustomize) build bin/installer > deploy/wasme.yaml.tmp && mv deploy/wasme.yaml.tmp deploy/wasme.yaml
	@echo ">> deploy/wasme.yaml now runs $$(cat bin/wasme-image.ref)"
endif

.PHONY: fmt
fmt: ## Run gofmt on the code.
	gofmt -l -w $$(git ls-files '*.go' | grep -v '^hack/tools/')

.PHONY: vet
vet: ## Run go vet (the main module, the wasip1 example filters, the Istio interop module).
	go vet ./...
	cd examples/filters && GOOS=wasip1 GOARCH=wasm go vet ./...
	cd test/interop/istio && go vet ./...

.PHONY: lint
lint: ## Run golangci-lint (pinned in hack/tools/golangci-lint; .golangci.yml says which linters and why).
	$(call TOOL,golangci-lint) run ./...

.PHONY: tidy
tidy: ## Tidy go.mod of the main module and of each tool module.
	go mod tidy
	for d in hack/tools/*/ test/interop/istio/ examples/filters/; do (cd $$d && go mod tidy); done

.PHONY: verify
verify: generate manifests build-installer tidy fmt vet lint ## Regenerate everything and fail if the tree changed.
	@if [ -n "$$(git status --porcelain)" ]; then \
		echo "make verify: the tree is not clean after regeneration:"; git status --porcelain; git --no-pager diff --stat; exit 1; fi

.PHONY: tools
tools: ## Build the pinned test tools (etcd, kube-apiserver, istiod, istioctl, pilot-agent, CoreDNS, registry, helm, oras, crane, cosign, controller-gen, kustomize, golangci-lint, the real node's kubelet, containerd, ...) into the tool cache.
	hack/tools/build.sh etcd kube-apiserver istiod istioctl pilot-agent coredns registry helm oras crane cosign controller-gen kustomize golangci-lint >/dev/null
	hack/tools/build.sh --node >/dev/null

##@ Build and test

.PHONY: build
build: ## Build bin/wasme.
	go build -ldflags "$(LDFLAGS)" -o bin/wasme ./cmd/wasme

# make image IMAGE=registry.example.com/team/wasme:v0.1.0 pushes; without IMAGE: bin/wasme-image.
IMAGE ?=
PLATFORMS ?= linux/amd64,linux/arm64
.PHONY: image
image: ## Build the wasme image (OCI index, PLATFORMS); push to IMAGE, or write the OCI layout bin/wasme-image.
	@mkdir -p bin
	go run ./hack/image -platforms $(PLATFORMS) -version $(VERSION) $(if $(IMAGE),-push $(IMAGE)) -ref-file bin/wasme-image.ref

.PHONY: test
test: ## Run every test against a real kube-apiserver and etcd (test/e2e also against a real istiod; test/chart runs helm lint and helm template; test/node on a real node: kubelet, containerd, runc, CNI, kube-proxy, as root).
	@hack/prereqs.sh test
	@assets=$$(hack/tools/build.sh --assets) && istiod=$$(hack/tools/build.sh istiod) && registry=$$(hack/tools/build.sh registry) && \
	  helm=$$(hack/tools/build.sh helm) && node=$$(hack/tools/build.sh --node) && cosign=$$(hack/tools/build.sh cosign) && \
	  coredns=$$(hack/tools/build.sh coredns) && istioctl=$$(hack/tools/build.sh istioctl) && agent=$$(hack/tools/build.sh pilot-agent) && \
	  echo ">> KUBEBUILDER_ASSETS=$$assets WASME_ISTIOD=$$istiod WASME_TEST_REGISTRY=$$registry WASME_HELM=$$helm WASME_NODE_TOOLS=$$node WASME_COSIGN=$$cosign WASME_COREDNS=$$coredns WASME_ISTIOCTL=$$istioctl WASME_PILOT_AGENT=$$agent" && \
	  export KUBEBUILDER_ASSETS=$$assets WASME_ISTIOD=$$istiod WASME_TEST_REGISTRY=$$registry WASME_HELM=$$helm WASME_NODE_TOOLS=$$node WASME_COSIGN=$$cosign \
	    WASME_COREDNS=$$coredns WASME_ISTIOCTL=$$istioctl WASME_PILOT_AGENT=$$agent && \
	  go test -timeout 30m $(GO_TEST_FLAGS) ./... && \
	  cd test/interop/istio && go test $(GO_TEST_FLAGS) ./...

.PHONY: race
race: ## Run the packages where concurrency lives (module server, node cache daemon, filter host pools) under the race detector.
	@assets=$$(hack/tools/build.sh --assets) && registry=$$(hack/tools/build.sh registry) && \
	  KUBEBUILDER_ASSETS=$$assets WASME_TEST_REGISTRY=$$registry go test -race -timeout 20m ./internal/cacheprotocol/ ./internal/nodecache/ ./internal/wasmhost/

FUZZTIME ?= 10s
.PHONY: fuzz
fuzz: ## Run each fuzz target briefly (FUZZTIME, default 10s) beyond its seed corpus.
	for f in FuzzParseReference FuzzDetectLayout FuzzExtractCompatLayer; do \
	  go test ./pkg/wasmimage -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) || exit 1; done

.PHONY: demo
demo: ## The seed walkthrough on a local control plane (etcd, kube-apiserver, istiod, istioctl, pilot-agent, CoreDNS, registry, wasme); KEEP=1 keeps it up.
	@hack/prereqs.sh demo
	@echo ">> demo: on the simulated node (pods are objects, no kubelet): the walkthrough on the real node needs Istio's injector and pilot-agent in pods, not done yet; test/node runs wasme on a real node"
	@echo ">> then: etcd, kube-apiserver, istiod, the registry, the wasme operator and 2 node caches on 127.0.0.1, the seed walkthrough (about a minute)"
	@echo ">> compiling hack/demo (a minute the first time)"
	@go run ./hack/demo $(if $(KEEP),--keep)

.PHONY: bench
bench: build ## Run the benchmarks (docs/performance.md): print the table, write bench/results/latest.json.
	@# Row 5 compares the node cache with Debian's nginx; as root it is installed when missing.
	@hack/prereqs.sh bench
	@assets=$$(hack/tools/build.sh --assets) && registry=$$(hack/tools/build.sh registry) && hack/tools/build.sh oras >/dev/null && \
	  echo ">> KUBEBUILDER_ASSETS=$$assets WASME_TEST_REGISTRY=$$registry; compiling bench/cmd/wasme-bench" && \
	  KUBEBUILDER_ASSETS=$$assets WASME_TEST_REGISTRY=$$registry go run ./bench/cmd/wasme-bench -wasme bin/wasme $(if $(ROWS),-rows $(ROWS))

.PHONY: clean
clean: ## Remove build output (the tool cache stays).
	rm -rf bin
