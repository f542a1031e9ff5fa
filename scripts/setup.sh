#!/usr/bin/env bash
# Installs everything the project needs on a fresh machine, reusing what is already there:
# a Python virtual environment (.venv), the Go-built control plane and helm (.cache/bin),
# configurable-http-proxy (.cache/node) and the Debian packages the tests use.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# Debian packages: git (builder), skopeo (the builder's image import), chromium (browser
# tests), buildah + docker-registry + busybox-static + mmdebstrap (images built on this
# machine), and the real test node's
# container runtime and network: containerd, runc, CNI plugins, iproute2, iptables, nftables
# (kube-proxy's tables are removed after it), nodejs (copied into the proxy image), dpkg-dev
# (dpkg-scanpackages indexes the test cluster's local Debian repository), patch (tools/build.sh
# patches its copy of kube-network-policies).
need_apt=()
for pkg in git skopeo chromium buildah docker-registry busybox-static mmdebstrap containerd runc \
  containernetworking-plugins iproute2 iptables nftables nodejs dpkg-dev patch; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  mkdir -p .cache && apt-get update -qq >.cache/apt.log 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >>.cache/apt.log 2>&1 || { tail -20 .cache/apt.log; exit 1; }
fi

stamp=.venv/.installed
if [ ! -x .venv/bin/python ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: creating the Python virtual environment in .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test,demo]'
  touch "$stamp"
else
  echo "setup: .venv up to date"
fi

chp=.cache/node/node_modules/.bin/configurable-http-proxy
if [ ! -x "$chp" ]; then
  echo "setup: installing configurable-http-proxy with npm into .cache/node"
  mkdir -p .cache/node
  npm install --no-audit --no-fund --silent --prefix .cache/node configurable-http-proxy@5
else
  echo "setup: configurable-http-proxy present"
fi

tools/build.sh
