#!/usr/bin/env bash
# Builds the test cluster (kube-apiserver, etcd; kubelet, kube-scheduler,
# kube-controller-manager, kube-proxy, CoreDNS and the NetworkPolicy agent kube-network-policies for
# the real node) and helm from the pinned Go modules under tools/ into .cache/bin/, reusing binaries
# whose inputs (go.mod, go.sum, flags, patch) are unchanged.
#   tools/build.sh            build what is missing or stale
#   tools/build.sh --force    rebuild everything
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
bin="${AICOE_TOOLS_BIN:-$root/.cache/bin}"
mkdir -p "$bin"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
force=${1:-}

modver() { (cd "$1" && go list -m -f '{{.Version}}' "$2"); }
k8s_version=$(modver "$here/kube" k8s.io/kubernetes)
k8s_minor=$(echo "$k8s_version" | cut -d. -f2)
helm_version=$(modver "$here/helm" helm.sh/helm/v3)

stamp() { # version-stamping ldflags
  case "$1" in
    kube-apiserver|kubelet|kube-scheduler|kube-controller-manager|kube-proxy)
      local f=""
      for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        f="$f -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$k8s_minor -X $p.gitTreeState=clean"
      done
      echo "-s -w$f" ;;
    etcd|coredns|kube-network-policies) echo "-s -w" ;;
    helm) echo "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version -X helm.sh/helm/v3/internal/version.gitTreeState=clean" ;;
  esac
}

build() { # name module-dir package
  local name=$1 dir=$2 pkg=$3 flags key
  flags=$(stamp "$name")
  key=$(cat "$dir/go.mod" "$dir/go.sum" <(echo "$flags $pkg") <(go version) | sha256sum | cut -c1-16)
  if [ "$force" != "--force" ] && [ -x "$bin/$name" ] && [ "$(cat "$bin/$name.key" 2>/dev/null)" = "$key" ]; then
    echo "tools: $name up to date ($bin/$name)"
    return
  fi
  echo "tools: building $name from $pkg (a cold build takes minutes) ..."
  local start=$SECONDS
  (cd "$dir" && go build -trimpath -ldflags "$flags" -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name"
  echo "$key" > "$bin/$name.key"
  echo "tools: built $name in $((SECONDS - start)) s"
}

build_patched() { # name module-dir module package-in-module: the module with module-dir/aicoe.patch
  local name=$1 dir=$2 mod=$3 pkg=$4 flags key src work
  flags=$(stamp "$name")
  key=$(cat "$dir/go.mod" "$dir/go.sum" "$dir/aicoe.patch" <(echo "$flags $mod $pkg") <(go version) | sha256sum | cut -c1-16)
  if [ "$force" != "--force" ] && [ -x "$bin/$name" ] && [ "$(cat "$bin/$name.key" 2>/dev/null)" = "$key" ]; then
    echo "tools: $name up to date ($bin/$name)"
    return
  fi
  echo "tools: building $name from $mod ($pkg) with $dir/aicoe.patch (a cold build takes minutes) ..."
  local start=$SECONDS
  (cd "$dir" && go mod download "$mod")  # checked against go.sum
  src=$(cd "$dir" && go list -m -f '{{.Dir}}' "$mod")
  work=$(mktemp -d)
  cp -r "$src/." "$work"  # a copy: the module cache stays as downloaded
  chmod -R u+w "$work"
  patch -d "$work" -p1 --quiet < "$dir/aicoe.patch"
  (cd "$work" && go build -trimpath -ldflags "$flags" -o "$bin/$name.tmp" "$pkg")  # its own go.sum
  rm -rf "$work"
  mv "$bin/$name.tmp" "$bin/$name"
  echo "$key" > "$bin/$name.key"
  echo "tools: built $name in $((SECONDS - start)) s"
}

build etcd "$here/etcd" go.etcd.io/etcd/server/v3
build kube-apiserver "$here/kube" k8s.io/kubernetes/cmd/kube-apiserver
build helm "$here/helm" helm.sh/helm/v3/cmd/helm
for cmd in kubelet kube-scheduler kube-controller-manager kube-proxy; do  # the real node
  build "$cmd" "$here/kube" "k8s.io/kubernetes/cmd/$cmd"
done
build coredns "$here/coredns" github.com/coredns/coredns  # cluster DNS on the real node
# NetworkPolicies on the real node; aicoe.patch: the xtables NFQUEUE target instead of the
# nftables queue expression (kernels without nft_queue), a --kubeconfig flag, and INPUT judged
build_patched kube-network-policies "$here/kube-network-policies" sigs.k8s.io/kube-network-policies ./cmd
"$bin/kube-apiserver" --version
"$bin/kubelet" --version
"$bin/etcd" --version | sed -n 1p
"$bin/helm" version --short
