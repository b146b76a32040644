#!/usr/bin/env bash
# Build (or reuse) the real node's binaries, kubelet and kube-proxy, from the same pinned
# k8s.io/kubernetes release as the control plane (../go.mod), into the same cache as
# ../build.sh: ${KUBEMAP_TESTCLUSTER_CACHE:-$HOME/.cache/kubemap-testcluster}/bin/<k8s-version>/.
# ../go.mod is tidied for the control plane only, so the build runs in a scratch copy of it
# (-mod=mod may add kubelet's extra requirements there) and never edits the checked-in files.
# A binary is rebuilt only when ../go.mod or ../go.sum changed (a stamp file per binary).
# Prints the bin dir on the last line of stdout; progress and durations go to stderr.
# Cold on 2 cores: about 12 min for kubelet, 2 more for kube-proxy (shared package cache).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
module="$(cd "$here/.." && pwd)"
cache="${KUBEMAP_TESTCLUSTER_CACHE:-$HOME/.cache/kubemap-testcluster}"

if ! command -v go >/dev/null 2>&1; then
  echo "realnode/build.sh: 'go' is not on PATH; install Go >= 1.25 (https://go.dev/dl/) and retry." >&2
  exit 1
fi
k8s_version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$module/go.mod")"
if [[ -z "$k8s_version" ]]; then
  echo "realnode/build.sh: could not read the k8s.io/kubernetes version from $module/go.mod" >&2
  exit 1
fi
bin="$cache/bin/$k8s_version"
mkdir -p "$bin"
# Its own lock: the node build may run while ../build.sh builds the control plane.
exec 9>"$cache/.build-node.lock"
if ! flock -n 9; then
  echo "realnode/build.sh: another build holds $cache/.build-node.lock; waiting for it..." >&2
  flock 9
fi

export CGO_ENABLED=0 GOFLAGS=-mod=mod
major="${k8s_version#v}"; major="${major%%.*}"
minor="${k8s_version#v*.}"; minor="${minor%%.*}"
version_ldflags=""
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  version_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  version_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cp "$module/go.mod" "$module/go.sum" "$scratch/"

build() {  # build NAME PACKAGE
  local name="$1" pkg="$2" stamp want
  stamp="$bin/.$name.stamp"
  want="$(cat "$module/go.mod" "$module/go.sum" | sha256sum | cut -d' ' -f1) $pkg"
  if [[ -x "$bin/$name" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "realnode/build.sh: reusing $bin/$name" >&2
    return
  fi
  echo "realnode/build.sh: building $name from $pkg (cold on 2 cores this takes many minutes)..." >&2
  local start=$SECONDS
  (cd "$scratch" && go build -trimpath -tags=selinux,notest,grpcnotrace \
      -ldflags="-s -w$version_ldflags" -o "$bin/.$name.tmp" "$pkg")
  mv -f "$bin/.$name.tmp" "$bin/$name"
  echo "$want" >"$stamp"
  echo "realnode/build.sh: built $name in $((SECONDS - start))s" >&2
}

total=$SECONDS
build kubelet k8s.io/kubernetes/cmd/kubelet
build kube-proxy k8s.io/kubernetes/cmd/kube-proxy
echo "realnode/build.sh: node binaries ready in $((SECONDS - total))s" >&2
echo "$bin"
