#!/usr/bin/env bash
# The prerequisite check that `make demo`, `make test`, `make bench` and .ci/run run first. It
# takes seconds and finds a missing prerequisite before any long build starts:
#
#   hack/prereqs.sh TARGET      TARGET: demo, test, bench, ci or realnode
#
# It checks Go, the shell tools the build uses and free disk space; installs the Debian
# packages TARGET needs when it runs as root (otherwise it names the command and fails); and
# says which pinned tools TARGET builds on this first run and about how long that takes.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:?usage: hack/prereqs.sh demo|test|bench|ci|realnode}
cache=${WASME_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wasme-tools}
problems=()

# The pinned tools each target builds, and about how many minutes each takes on two cores
# (measured cold on a shared two-core machine; a faster machine takes less).
case "$target" in
  demo) tools=(etcd kube-apiserver istiod registry) ;;
  test) tools=(etcd kube-apiserver istiod istioctl coredns registry helm oras crane cosign kubelet containerd) ;;
  bench) tools=(etcd kube-apiserver registry oras) ;;
  ci) tools=(etcd kube-apiserver istiod istioctl coredns registry helm oras crane cosign controller-gen kustomize golangci-lint kubelet containerd) ;;
  realnode) tools=(etcd kube-apiserver kubelet containerd coredns istiod istioctl) ;;
  *) echo "hack/prereqs.sh: unknown target $target (demo, test, bench, ci, realnode)" >&2; exit 2 ;;
esac
minutes_of() {
  case "$1" in
    kube-apiserver) echo 6 ;; istiod | istioctl) echo 8 ;; cosign) echo 12 ;; coredns) echo 4 ;; etcd | registry | helm | containerd) echo 3 ;;
    kubelet | golangci-lint) echo 5 ;; # kubelet with kube-controller-manager, kube-scheduler, kube-proxy and kubectl
    *) echo 1 ;;
  esac
}

# Debian packages: the real node's runtime pieces (test/node runs a kubelet; make test and CI
# run it); the bench compares the node cache with nginx.
node_pkgs=(runc containernetworking-plugins iptables conntrack curl netbase)
case "$target" in
  realnode | test | ci) apt_pkgs=("${node_pkgs[@]}") ;;
  bench) apt_pkgs=(nginx) ;;
  *) apt_pkgs=() ;;
esac
# The AssemblyScript tests build the original SDK's filter with npm (wasme build assemblyscript);
# its downloads are cached beside the tools ($WASME_TOOLS_CACHE/npm).
case "$target" in
  test | ci) command -v npm >/dev/null || apt_pkgs+=(nodejs npm) ;;
esac

# Go, at least the version go.mod asks for.
want_go=$(awk '$1 == "go" {print $2; exit}' go.mod)
if ! command -v go >/dev/null; then
  problems+=("Go $want_go or later is missing: install it (https://go.dev/doc/install) and put it on PATH")
else
  have_go=$(go env GOVERSION | sed 's/^go//')
  if [ "$(printf '%s\n%s\n' "$want_go" "$have_go" | sort -V | head -1)" != "$want_go" ]; then
    problems+=("Go $have_go is older than go.mod's $want_go: install Go $want_go or later")
  fi
fi
for cmd in git flock sha256sum awk sed; do
  command -v "$cmd" >/dev/null || problems+=("$cmd is missing (apt-get install git util-linux coreutils gawk sed)")
done

missing_tools=()
if [ ${#tools[@]} -gt 0 ] && command -v go >/dev/null; then
  mapfile -t missing_tools < <(hack/tools/build.sh --missing "${tools[@]}")
fi
# A cold build of the tools needs room for the Go build and module caches.
if [ ${#missing_tools[@]} -gt 0 ]; then
  mkdir -p "$cache"
  free_kib=$(df -Pk "$cache" | awk 'NR == 2 {print $4}')
  if [ "${free_kib:-0}" -lt $((4 * 1024 * 1024)) ]; then
    problems+=("less than 4 GiB free under $cache for the tool builds (set WASME_TOOLS_CACHE to another disk)")
  fi
fi

missing_pkgs=()
for p in "${apt_pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing_pkgs+=("$p")
done
if [ ${#missing_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo ">> installing Debian packages for make $target: ${missing_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_pkgs[@]}" >/dev/null
  elif [ "$target" = bench ]; then
    # The bench runs without its nginx comparison and says so in the table.
    echo ">> nginx is missing: row 5 runs without its comparison (sudo apt-get install nginx)"
  else
    problems+=("Debian packages missing: ${missing_pkgs[*]} (run: sudo apt-get install ${missing_pkgs[*]})")
  fi
fi

if [ ${#problems[@]} -gt 0 ]; then
  echo ">> make $target cannot start:" >&2
  for p in "${problems[@]}"; do echo "   - $p" >&2; done
  exit 1
fi

echo ">> make $target: prerequisites ok (go $(go env GOVERSION | sed 's/^go//'), tools cache $cache)"
if [ ${#missing_tools[@]} -gt 0 ]; then
  total=0
  for t in "${missing_tools[@]}"; do total=$((total + $(minutes_of "$t"))); done
  echo ">> first run: building ${missing_tools[*]} from their pinned Go modules, about $total min on 2 cores;"
  echo ">>   once per pin (later runs reuse them); a progress line a minute while each builds"
elif [ ${#tools[@]} -gt 0 ]; then
  echo ">> pinned tools already built: ${tools[*]}"
fi
