#!/bin/sh
# The push step of a build pod (backends/kubernetes_job.py): never runs user content.
set -eu
layout="$WORKSPACE/layout"
# the destination's push Secret, mounted in this container only (empty: no credentials)
auth=${REGISTRY_AUTH_FILE:-}
if command -v skopeo >/dev/null 2>&1; then
  push_to() {  # $1: the layout's image; $2: the destination; $3: its digest's file (optional)
    skopeo copy -q --dest-tls-verify="${TLS_VERIFY:-true}" ${3:+--digestfile "$3"} \
      ${auth:+--dest-authfile "$auth"} "oci:$layout:$1" "docker://$2"
  }
else
  B="--storage-driver vfs --root $PUSH_STORAGE/root --runroot $PUSH_STORAGE/run"
  push_to() {
    image=$(buildah $B pull -q "oci:$layout:$1")
    buildah $B push -q --tls-verify="${TLS_VERIFY:-true}" ${3:+--digestfile "$3"} \
      ${auth:+--authfile "$auth"} "$image" "docker://$2"
  }
fi
echo "==> pushing $OUTPUT_IMAGE"
push_to image "$OUTPUT_IMAGE" "$PUSH_STORAGE/digest"
digest=$(cat "$PUSH_STORAGE/digest")
for extra in $EXTRA_IMAGES; do
  echo "==> pushing $extra"
  push_to image "$extra"
done
# a new environment image, to the builder's cache repository only (the name is checked: the
# build step ran user content)
env_image=$(head -n 1 "$WORKSPACE/env-image" 2>/dev/null | head -c 200 || true)
if [ -n "$env_image" ] && [ -n "${CACHE_REPO:-}" ]; then
  case "${env_image#"$CACHE_REPO:env-"}" in
    "$env_image"|*[!0-9a-f]*|"") echo "==> ignoring an environment image name: $env_image" ;;
    *) echo "==> keeping the environment image $env_image"
       push_to env "$env_image" || echo "==> the environment image could not be kept" ;;
  esac
fi
# the digest, then the image check's report (written by the build step: data, capped)
report=$(cat "$WORKSPACE/image-report.json" 2>/dev/null || true)
case "$report" in
  "{"?*"}") ;;
  *) report="" ;;
esac
if [ -n "$report" ] && [ "$(printf '%s' "$report" | wc -c)" -le 3900 ]; then
  printf '{"digest":"%s",%s' "$digest" "${report#?}" > "${TERMINATION_LOG:-/dev/termination-log}"
else
  printf '{"digest":"%s"}' "$digest" > "${TERMINATION_LOG:-/dev/termination-log}"
fi
echo "==> pushed $OUTPUT_IMAGE@$digest"
