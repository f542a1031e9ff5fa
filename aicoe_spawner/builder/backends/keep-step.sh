#!/bin/sh
# The keep step of a build pod (backends/kubernetes_job.py): never runs user content.
set -eu
# Runs beside the push step (the build ends with both). Never fails the pod and never takes
# longer than KEEP_TIMEOUT seconds: a store that cannot keep an image only costs a later build
# on this node its pull.
layout="$WORKSPACE/layout"
env_image=$(head -n 1 "$WORKSPACE/env-image" 2>/dev/null | head -c 200 || true)
[ -n "$env_image" ] && [ -n "${CACHE_REPO:-}" ] || exit 0  # no new environment image
key=${env_image#"$CACHE_REPO:env-"}
case "$key" in
  "$env_image"|*[!0-9a-f]*|"") echo "==> ignoring an environment image name: $env_image"; exit 0 ;;
esac
# build steps on this node that want this image wait for the import rather than pull it
marks="$NODE_IMAGES/aicoe-keeping"
mkdir -p "$marks" && : > "$marks/env-$key" || true
N="--storage-driver overlay --root $NODE_IMAGES --runroot $PUSH_STORAGE/keep-run"
limit=${KEEP_TIMEOUT:-300}
if id=$(timeout "$limit" buildah $N pull -q "oci:$layout:env" 2>"$PUSH_STORAGE/keep.err") &&
    buildah $N tag "$id" "$env_image" 2>>"$PUSH_STORAGE/keep.err"; then
  echo "==> the node's image store keeps $env_image"
else
  why=$(tail -n 1 "$PUSH_STORAGE/keep.err")
  echo "==> the node's image store could not keep $env_image: ${why:-no end within $limit s}"
fi
rm -f "$marks/env-$key"
