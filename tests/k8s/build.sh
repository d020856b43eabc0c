#!/usr/bin/env bash
# Builds the test control plane (etcd, kube-apiserver, kube-controller-manager, and a kubectl of
# the same version) from the Go
# module proxy, at the versions pinned by tests/k8s/kube/go.mod and tests/k8s/etcd/go.mod,
# into a cache outside the repository. A warm cache whose pins have not changed is reused at
# once; otherwise Go's own build cache makes a rebuild incremental.
#
#   tests/k8s/build.sh          # builds if needed, prints the folder holding the binaries
#
# MOIM_K8S_CACHE overrides the cache folder (default ~/.cache/moim/k8s). The tests find the
# binaries there (or in MOIM_K8S_BIN).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${MOIM_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moim/k8s}
bin=$cache/bin
mkdir -p "$bin"

# The Kubernetes version comes from the pin, so the binaries report what they are (helm
# checks a chart's kubeVersion against it).
kube_version=$(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$here/kube/go.mod")
[ -n "$kube_version" ] || { echo "tests/k8s/kube/go.mod pins no k8s.io/kubernetes" >&2; exit 1; }

stamp=$(cat "$here/build.sh" "$here/kube/go.mod" "$here/kube/go.sum" "$here/etcd/go.mod" \
  "$here/etcd/go.sum" "$here/etcd/main.go" | sha256sum | cut -c1-16)
if [ -f "$bin/.stamp" ] && [ "$(cat "$bin/.stamp")" = "$stamp" ] &&
  [ -x "$bin/etcd" ] && [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-controller-manager" ] &&
  [ -x "$bin/kubectl" ]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "tests/k8s/build.sh needs Go (1.26 or newer)" >&2; exit 1; }
rm -f "$bin/.stamp"
start=$(date +%s)
major=${kube_version#v}; major=${major%%.*}
minor=${kube_version#v*.}; minor=${minor%%.*}
ldflags=""
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
echo "building kube-apiserver, kube-controller-manager and kubectl $kube_version into $bin" >&2
(cd "$here/kube" && go build -trimpath -ldflags "-s -w $ldflags" -o "$bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl)
echo "building etcd into $bin" >&2
(cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd" .)
echo "$stamp" > "$bin/.stamp"
echo "control plane built in $(( $(date +%s) - start )) s" >&2
echo "$bin"
