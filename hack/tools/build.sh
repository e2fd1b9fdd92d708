#!/usr/bin/env bash
# Builds the pinned test and development tools from their Go modules, once per pin.
#
#   hack/tools/build.sh TOOL...      build each TOOL (if needed), print the path of its binary
#   hack/tools/build.sh --assets     build etcd and kube-apiserver, print a KUBEBUILDER_ASSETS dir
#   hack/tools/build.sh --istio-dir  print the source dir of the pinned istio.io/istio module
#   hack/tools/build.sh --missing TOOL...  print those TOOLs not built yet for their current pin
#
# TOOL is a folder of hack/tools with its own go.mod (etcd, kube-apiserver, controller-gen, kustomize,
# istiod, oras, crane, registry, helm). A build is keyed by the hash of that folder's go.mod, go.sum and Go files and
# kept in $WASME_TOOLS_CACHE (default: $XDG_CACHE_HOME/wasme-tools or ~/.cache/wasme-tools), so
# later runs on the same machine reuse it and a change of pin rebuilds it. Progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${WASME_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wasme-tools}
mkdir -p "$cache"

# The package each tool module builds; "." means the module's own main package.
pkg_of() {
  case "$1" in
    etcd) echo . ;;
    kube-apiserver) echo k8s.io/kubernetes/cmd/kube-apiserver ;;
    controller-gen) echo sigs.k8s.io/controller-tools/cmd/controller-gen ;;
    istiod) echo istio.io/istio/pilot/cmd/pilot-discovery ;;
    oras) echo oras.land/oras/cmd/oras ;;
    crane) echo github.com/google/go-containerregistry/cmd/crane ;;
    kustomize) echo sigs.k8s.io/kustomize/kustomize/v5 ;;
    registry) echo github.com/distribution/distribution/v3/cmd/registry ;;
    helm) echo helm.sh/helm/v3/cmd/helm ;;
    *) echo "build.sh: unknown tool $1 (known: etcd kube-apiserver controller-gen kustomize istiod oras crane registry helm)" >&2; return 1 ;;
  esac
}

key_of() {
  (cd "$here/$1" && cat go.mod go.sum $(ls *.go 2>/dev/null) | sha256sum | cut -c1-16)
}

build() {
  local tool=$1 pkg dir out
  pkg=$(pkg_of "$tool")
  dir="$cache/$tool-$(key_of "$tool")"
  out="$dir/$tool"
  mkdir -p "$dir"
  # One build per pin at a time: parallel test runs that need the same tool wait for the first.
  exec {lock}>"$dir.lock"
  flock "$lock"
  if [ ! -x "$out" ]; then
    echo ">> building $tool (once per pin, a few minutes) into $dir" >&2
    local start=$SECONDS hb
    # A line a minute, so a long build (istiod, kube-apiserver) does not look like a hang.
    ( while sleep 60; do echo ">>   still building $tool ($(( (SECONDS - start) / 60 )) min)" >&2; done ) &
    hb=$!
    # Build to a temp name and rename, so an interrupted build never leaves a binary behind.
    if ! (cd "$here/$tool" && go build -o "$out.tmp.$$" "$pkg") >&2; then
      kill "$hb" 2>/dev/null; wait "$hb" 2>/dev/null || true
      rm -f "$out.tmp.$$"
      echo ">> building $tool failed (see above)" >&2
      return 1
    fi
    kill "$hb" 2>/dev/null; wait "$hb" 2>/dev/null || true
    mv -f "$out.tmp.$$" "$out"
    echo ">> built $tool in $((SECONDS - start))s" >&2
    # Builds of older pins of this tool are dead weight (hundreds of MB for kube-apiserver).
    for old in "$cache/$tool"-*; do
      [ "$old" = "$dir" ] || [ "$old" = "$dir.lock" ] || rm -rf "$old"
    done
  fi
  exec {lock}>&-
  echo "$out"
}

case "${1:-}" in
  --assets)
    etcd=$(build etcd)
    kas=$(build kube-apiserver)
    dir="$cache/assets-$(echo "$etcd $kas" | sha256sum | cut -c1-16)"
    if [ ! -d "$dir" ]; then
      mkdir -p "$dir.tmp.$$"
      ln -sf "$etcd" "$dir.tmp.$$/etcd"
      ln -sf "$kas" "$dir.tmp.$$/kube-apiserver"
      mv -T "$dir.tmp.$$" "$dir" 2>/dev/null || rm -rf "$dir.tmp.$$"
    fi
    echo "$dir"
    ;;
  --istio-dir)
    ver=$(awk '$1 == "istio.io/istio" {print $2; exit}' "$here/istiod/go.mod")
    (cd "$here/istiod" && go mod download -json "istio.io/istio@$ver") | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'
    ;;
  --missing)
    shift
    for t in "$@"; do
      pkg_of "$t" >/dev/null
      [ -x "$cache/$t-$(key_of "$t")/$t" ] || echo "$t"
    done
    ;;
  ""|-h|--help)
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    for t in "$@"; do build "$t"; done
    ;;
esac
