#!/usr/bin/env bash
# Build (or reuse) the test cluster's control-plane binaries:
#   kube-apiserver, kube-controller-manager  from ./go.mod      (k8s.io/kubernetes)
#   etcd                                     from ./etcd/go.mod (go.etcd.io/etcd/server/v3)
#   kubeletstream (the emulator's kubelet    from ./go.mod      (./kubeletstream: the kubelet's
#     endpoint: port-forward, logs)                              portforward package, v0.35)
#   kueue (Kueue's manager, `up --kueue`)    `go install sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION`
#                                            (./kueue/VERSION; built against its own go.mod)
# into ${KUBEMAP_TESTCLUSTER_CACHE:-$HOME/.cache/kubemap-testcluster}/bin/<k8s-version>/.
# A binary is rebuilt only when the go.mod/go.sum (or version) it comes from changed (a stamp
# file per binary; kubeletstream's also covers its own sources). kueue builds beside
# kube-controller-manager: their link steps overlap.
# Prints the bin dir on the last line of stdout; progress and durations go to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${KUBEMAP_TESTCLUSTER_CACHE:-$HOME/.cache/kubemap-testcluster}"

if ! command -v go >/dev/null 2>&1; then
  echo "build.sh: 'go' is not on PATH; install Go >= 1.25 (https://go.dev/dl/) and retry." >&2
  exit 1
fi

# The one pinned release, read from go.mod so that there is a single source of truth.
k8s_version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$here/go.mod")"
if [[ -z "$k8s_version" ]]; then
  echo "build.sh: could not read the k8s.io/kubernetes version from $here/go.mod" >&2
  exit 1
fi
bin="$cache/bin/$k8s_version"
mkdir -p "$bin"
# One build at a time per cache (CI and a developer's shell may both call this).
exec 9>"$cache/.build.lock"
if ! flock -n 9; then
  echo "build.sh: another build holds $cache/.build.lock; waiting for it..." >&2
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

# build NAME MODULE_DIR PACKAGE [EXTRA_LDFLAGS [SOURCE_DIR]]
# SOURCE_DIR: a package of ours, whose *.go files count in the stamp besides go.mod/go.sum.
build() {
  local name="$1" moddir="$2" pkg="$3" extra="${4:-}" srcdir="${5:-}"
  local stamp want
  stamp="$bin/.$name.stamp"
  want="$(cat "$moddir/go.mod" "$moddir/go.sum" ${srcdir:+"$srcdir"/*.go} | sha256sum | cut -d' ' -f1) $pkg"
  if [[ -x "$bin/$name" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "build.sh: reusing $bin/$name" >&2
    return
  fi
  echo "build.sh: building $name from $pkg (cold on 2 cores this takes many minutes)..." >&2
  local start=$SECONDS
  (cd "$moddir" && go build -trimpath -tags=selinux,notest,grpcnotrace \
      -ldflags="-s -w$extra" -o "$bin/.$name.tmp" "$pkg")
  mv -f "$bin/.$name.tmp" "$bin/$name"
  echo "$want" >"$stamp"
  echo "build.sh: built $name in $((SECONDS - start))s" >&2
}

# build_kueue: `go install pkg@version` uses the kueue module's own go.mod and go.sum (checked
# against sum.golang.org), so no go.mod of ours pins its k8s.io v0.35 dependencies. The module
# stays in the module cache, where `testcluster up --kueue` reads its CRDs and webhooks.
build_kueue() {
  local version stamp want gobin
  version="$(tr -d '[:space:]' <"$here/kueue/VERSION")"
  stamp="$bin/.kueue.stamp"
  want="sigs.k8s.io/kueue/cmd/kueue@$version"
  if [[ -x "$bin/kueue" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "build.sh: reusing $bin/kueue" >&2
    return
  fi
  echo "build.sh: building kueue from $want (cold on 2 cores this takes minutes)..." >&2
  local start=$SECONDS
  gobin="$(mktemp -d "$bin/.kueue.XXXXXX")"
  # -mod is not allowed with `go install pkg@version`: GOFLAGS is cleared for this one.
  GOFLAGS= GOBIN="$gobin" go install -trimpath \
      -ldflags="-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$version" "$want"
  mv -f "$gobin/kueue" "$bin/kueue"
  rmdir "$gobin"
  echo "$want" >"$stamp"
  echo "build.sh: built kueue in $((SECONDS - start))s" >&2
}

total=$SECONDS
build etcd "$here/etcd" go.etcd.io/etcd/server/v3
build kube-apiserver "$here" k8s.io/kubernetes/cmd/kube-apiserver "$version_ldflags"
build_kueue >"$bin/.kueue.log" 2>&1 &
kueue_pid=$!
# If another build fails (set -e), still wait for this one: no go build outlives the lock.
trap 'wait "$kueue_pid" 2>/dev/null || true' EXIT
build kube-controller-manager "$here" k8s.io/kubernetes/cmd/kube-controller-manager "$version_ldflags"
build kubeletstream "$here" ./kubeletstream "" "$here/kubeletstream"
kueue_rc=0
wait "$kueue_pid" || kueue_rc=$?
trap - EXIT
cat "$bin/.kueue.log" >&2
rm -f "$bin/.kueue.log"
if [[ $kueue_rc != 0 ]]; then
  echo "build.sh: building kueue failed (exit $kueue_rc)" >&2
  exit "$kueue_rc"
fi
echo "build.sh: binaries ready in $((SECONDS - total))s" >&2
echo "$bin"
