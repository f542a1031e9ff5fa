#!/bin/sh
# The keep step of a build pod (backends/kubernetes_job.py): never runs user content.
set -eu
# Runs beside the push step: the build is ready once the push step has pushed (job_state), so
# keeping the new environment image on the node delays nobody. Never fails the pod: a store
# that cannot keep an image only costs a later build its pull.
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
if id=$(buildah $N pull -q "oci:$layout:env" 2>"$PUSH_STORAGE/keep.err") &&
    buildah $N tag "$id" "$env_image" 2>>"$PUSH_STORAGE/keep.err"; then
  echo "==> the node's image store keeps $env_image"
else
  echo "==> the node's image store could not keep $env_image: $(tail -n 1 "$PUSH_STORAGE/keep.err")"
fi
rm -f "$marks/env-$key"
