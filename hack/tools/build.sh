#!/usr/bin/env bash
# Builds the pinned test and development tools from their Go modules, once per pin.
#
#   hack/tools/build.sh TOOL...      build each TOOL (if needed), print the path of its binary
#   hack/tools/build.sh --assets     build etcd and kube-apiserver, print a KUBEBUILDER_ASSETS dir
#   hack/tools/build.sh --node       build the real node's tools, print a dir holding all of them
#   hack/tools/build.sh --istio-dir  print the source dir of the pinned istio.io/istio module
#   hack/tools/build.sh --missing TOOL...  print those TOOLs not built yet for their current pin
#
# TOOL is one of tools_table below, each built from a folder of hack/tools with its own go.mod.
# A build is keyed by the hash of that folder's go.mod, go.sum and Go files and kept in
# $WASME_TOOLS_CACHE (default: $XDG_CACHE_HOME/wasme-tools or ~/.cache/wasme-tools), so later
# runs on the same machine reuse it and a change of pin rebuilds it. Progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${WASME_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wasme-tools}
mkdir -p "$cache"

# Each tool: the folder of hack/tools holding its Go module, and the package it builds ("." means
# the module's own main package). One module may build several tools (the node tools share
# Kubernetes' staging replace block; containerd and its shim one module); they are built together.
tools_table='
etcd                     etcd            .
kube-apiserver           kube-apiserver  k8s.io/kubernetes/cmd/kube-apiserver
kubelet                  kube-node       k8s.io/kubernetes/cmd/kubelet
kube-controller-manager  kube-node       k8s.io/kubernetes/cmd/kube-controller-manager
kube-scheduler           kube-node       k8s.io/kubernetes/cmd/kube-scheduler
kube-proxy               kube-node       k8s.io/kubernetes/cmd/kube-proxy
kubectl                  kube-node       k8s.io/kubernetes/cmd/kubectl
containerd               containerd      github.com/containerd/containerd/v2/cmd/containerd
containerd-shim-runc-v2  containerd      github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
controller-gen           controller-gen  sigs.k8s.io/controller-tools/cmd/controller-gen
istiod                   istiod          istio.io/istio/pilot/cmd/pilot-discovery
istioctl                 istio-agent     istio.io/istio/istioctl/cmd/istioctl
pilot-agent              istio-agent     istio.io/istio/pilot/cmd/pilot-agent
coredns                  coredns         github.com/coredns/coredns
oras                     oras            oras.land/oras/cmd/oras
crane                    crane           github.com/google/go-containerregistry/cmd/crane
cosign                   cosign          github.com/sigstore/cosign/v3/cmd/cosign
kustomize                kustomize       sigs.k8s.io/kustomize/kustomize/v5
registry                 registry        github.com/distribution/distribution/v3/cmd/registry
helm                     helm            helm.sh/helm/v3/cmd/helm
golangci-lint            golangci-lint   github.com/golangci/golangci-lint/v2/cmd/golangci-lint
'

# The tools a real node runs (internal/testing/node), --node links them into one directory.
node_tools="etcd kube-apiserver kubelet kube-controller-manager kube-scheduler kube-proxy kubectl containerd containerd-shim-runc-v2"

module_of() {
  local m
  m=$(awk -v t="$1" '$1 == t {print $2}' <<<"$tools_table")
  [ -n "$m" ] || { echo "build.sh: unknown tool $1 (known: $(awk 'NF {printf "%s ", $1}' <<<"$tools_table"))" >&2; return 1; }
  echo "$m"
}

# Build settings of a module beyond the defaults: containerd is built static and without the
# snapshotters that need C libraries (btrfs, devmapper, zfs), which the tests do not use.
# istiod, istio-agent (pilot-agent, istioctl) and CoreDNS are built static too: they run in the
# real node's containers, on images without a C library, as Istio's and CoreDNS's own release
# builds are static (CGO_ENABLED=0).
env_of() {
  case "$1" in
    containerd | istiod | istio-agent | coredns) echo CGO_ENABLED=0 ;;
    *) echo "CGO_ENABLED=$(go env CGO_ENABLED)" ;;
  esac
}

# The build setting that is part of a module's key: istiod, istio-agent and CoreDNS became
# static after their first pin, so their key names it (a cached cgo build is not reused);
# containerd was static from the start and keeps its key.
static_key_of() {
  case "$1" in
    istiod | istio-agent | coredns) env_of "$1" ;;
  esac
}
flags_of() {
  case "$1" in
    containerd) echo -tags=no_btrfs,no_devmapper,no_zfs ;;
    kube-apiserver) version_flag_of "$1" ;;
  esac
}

# kube-apiserver reports its pin as its version (what kubectl version and Helm's kubeVersion
# check read); a plain go build leaves v0.0.0-master, which no chart's kubeVersion admits.
# The flag is part of the build's key; modules without one keep theirs.
version_flag_of() {
  case "$1" in
    kube-apiserver) echo "-ldflags=-X=k8s.io/component-base/version.gitVersion=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$here/$1/go.mod")" ;;
  esac
}

key_of() {
  (cd "$here/$1" && { cat go.mod go.sum $(ls *.go 2>/dev/null); version_flag_of "$1"; static_key_of "$1"; } | sha256sum | cut -c1-16)
}

dir_of() { echo "$cache/$1-$(key_of "$1")"; }

# istiod (pilot-discovery) and istio-agent (pilot-agent, istioctl) are separate modules so that
# neither build invalidates the other, but they must run one Istio: refuse a pin that drifted.
same_istio() {
  local a b
  a=$(awk '$1 == "istio.io/istio" {print $2; exit}' "$here/istiod/go.mod")
  b=$(awk '$1 == "istio.io/istio" {print $2; exit}' "$here/istio-agent/go.mod")
  [ "$a" = "$b" ] || { echo "build.sh: istio.io/istio is $a in hack/tools/istiod but $b in hack/tools/istio-agent; pin both to one version" >&2; return 1; }
}

build() {
  local tool=$1 mod dir out
  mod=$(module_of "$tool")
  case "$mod" in istiod | istio-agent) same_istio ;; esac
  dir=$(dir_of "$mod")
  out="$dir/$tool"
  mkdir -p "$dir"
  # One build per pin at a time: parallel test runs that need the same tool wait for the first.
  exec {lock}>"$dir.lock"
  flock "$lock"
  if [ ! -x "$out" ]; then
    local tools pkgs tmp hb start=$SECONDS
    tools=$(awk -v m="$mod" '$2 == m {printf "%s ", $1}' <<<"$tools_table")
    pkgs=$(awk -v m="$mod" '$2 == m {printf "%s ", $3}' <<<"$tools_table")
    echo ">> building $tools(once per pin, a few minutes) into $dir" >&2
    # A line a minute, so a long build (istiod, kube-apiserver, the node tools) does not look like a hang.
    ( while sleep 60; do echo ">>   still building $tools($(( (SECONDS - start) / 60 )) min)" >&2; done ) &
    hb=$!
    # Every tool of the module in one go build (shared compilation, parallel links) into a temp
    # dir, then renamed binary by binary, so an interrupted build never leaves a binary behind.
    tmp="$dir/.tmp.$$"
    rm -rf "$tmp" && mkdir -p "$tmp"
    # shellcheck disable=SC2046,SC2086
    if ! (cd "$here/$mod" && env $(env_of "$mod") go build $(flags_of "$mod") -o "$tmp/" $pkgs) >&2; then
      kill "$hb" 2>/dev/null; wait "$hb" 2>/dev/null || true
      rm -rf "$tmp"
      echo ">> building $tools failed (see above)" >&2
      return 1
    fi
    kill "$hb" 2>/dev/null; wait "$hb" 2>/dev/null || true
    # go build names a binary after its package path (without a /vN suffix); rename to the tool's name.
    local t p bin
    # shellcheck disable=SC2086
    set -- $pkgs
    for t in $tools; do
      p=$1; shift
      if [ "$p" = . ]; then bin=$mod; else bin=$(basename "$p"); [[ $bin =~ ^v[0-9]+$ ]] && bin=$(basename "$(dirname "$p")"); fi
      mv -f "$tmp/$bin" "$dir/$t"
    done
    rm -rf "$tmp"
    echo ">> built $tools in $((SECONDS - start))s" >&2
    # Builds of older pins of this module are dead weight (hundreds of MB for Kubernetes).
    for old in "$cache/$mod"-*; do
      [ "$old" = "$dir" ] || [ "$old" = "$dir.lock" ] || rm -rf "$old"
    done
  fi
  exec {lock}>&-
  echo "$out"
}

# links NAME TOOL... builds the tools and prints a directory of symlinks to them, keyed by their paths.
links() {
  local name=$1 paths=() t dir
  shift
  for t in "$@"; do paths+=("$(build "$t")"); done
  dir="$cache/$name-$(echo "${paths[*]}" | sha256sum | cut -c1-16)"
  if [ ! -d "$dir" ]; then
    mkdir -p "$dir.tmp.$$"
    for t in "${paths[@]}"; do ln -sf "$t" "$dir.tmp.$$/$(basename "$t")"; done
    mv -T "$dir.tmp.$$" "$dir" 2>/dev/null || rm -rf "$dir.tmp.$$"
  fi
  echo "$dir"
}

case "${1:-}" in
  --assets)
    links assets etcd kube-apiserver
    ;;
  --node)
    # shellcheck disable=SC2086
    links node $node_tools
    ;;
  --istio-dir)
    ver=$(awk '$1 == "istio.io/istio" {print $2; exit}' "$here/istiod/go.mod")
    (cd "$here/istiod" && go mod download -json "istio.io/istio@$ver") | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'
    ;;
  --missing)
    shift
    for t in "$@"; do
      mod=$(module_of "$t")
      [ -x "$(dir_of "$mod")/$t" ] || echo "$t"
    done
    ;;
  ""|-h|--help)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    for t in "$@"; do build "$t"; done
    ;;
esac
