"""The Kubernetes backend: one Job per build (pure manifests + state, and a thin async shell).

The build pod has two steps. The init container ``build`` fetches the commit and runs the
user's Dockerfile (or the s2i-equivalent one) with buildah, writing the image as an OCI layout
to a sized emptyDir; it has no credentials. The container ``push`` never runs user content: it
pushes the layout with the push secret, and writes the pushed digest (buildah
``--digestfile``) to its termination message. The pod runs with seccomp RuntimeDefault, no
service-account token, and ephemeral-storage limits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from ...options import parse_memory
from ..environment import ENVIRONMENT_MARKER
from ..image_check import CHECK_SCRIPT, PROBE, REPORT_PY, parse_termination
from ..kube import create_once, ignore_not_found, or_none, raw_json
from ..requests import BuildSpec
from ..source import s2i_dockerfile
from ..vocabulary import (
    MANAGED_BY,
    MANAGED_SELECTOR,
    BuildPhase,
    build_annotations,
    build_labels,
    job_id_of,
    object_name,
)
from .base import Backend, BackendState, LogReader, Watched

log = logging.getLogger("aicoe_spawner.builder.kubernetes")

WORKSPACE = "/var/lib/aicoe-build"  # the shared emptyDir: the OCI layout of the image
BUILD_STORAGE = "/var/lib/aicoe-build-storage"  # buildah storage of the build step
PUSH_STORAGE = "/var/lib/aicoe-push-storage"  # buildah storage of the push step
DEFAULT_SCRIPTS = "/usr/libexec/s2i"
PUSH_AUTH_FILE = "/var/run/secrets/push/.dockerconfigjson"  # in the push step only

# Runs user content (git checkout, Dockerfile steps). No credentials here. User-controlled
# text (paths, the base image's labels) is only ever data: quoted expansions, `case` patterns
# and realpath checks, never a shell or sed program.
BUILD_SCRIPT = (
    r"""set -eu
fail() {  # the build's reason, for the record's message (termination message)
  printf '%s\n' "$*" > "${BUILD_TERMINATION_LOG:-/dev/termination-log}" 2>/dev/null || true
  echo "error: $*" >&2; exit 2
}
# buildah's storage: the kernel's overlay where this container may mount it (a layer is then
# unpacked once and a container costs nothing), else vfs (every layer and container a full
# copy of the file system)
driver=vfs
probe="$BUILD_STORAGE/overlay-probe"
# buildah's overlay driver mounts a test overlay when it starts: it fails where it cannot
if buildah --storage-driver overlay --root "$probe/root" --runroot "$probe/run" info \
    >/dev/null 2>&1; then
  driver=overlay
fi
rm -rf "$probe"
B="--storage-driver $driver --root $BUILD_STORAGE/root --runroot $BUILD_STORAGE/run"
TLS="--tls-verify=${TLS_VERIFY:-true}"
work=$(mktemp -d)
echo "==> buildah storage: $driver"
echo "==> fetching $REPO at $COMMIT"
git init -q "$work/src"
cd "$work/src"
fetch() {  # no redirects, nothing of the pod's environment but PATH
  env -i PATH="$PATH" HOME="$work" GIT_ALLOW_PROTOCOL="$GIT_ALLOW_PROTOCOL" \
    GIT_TERMINAL_PROMPT=0 GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null \
    git -c http.followRedirects=false -c credential.helper= fetch -q --depth 1 -- "$REPO" "$1"
}
fetch "$COMMIT" 2>/dev/null || fetch "$REF"
git -c advice.detachedHead=false checkout -q FETCH_HEAD
got=$(git rev-parse HEAD)
test "$got" = "$COMMIT" || { echo "commit mismatch: got $got"; exit 2; }
src=$(realpath -e -- "$work/src")
inside() {  # $1 resolved (symlinks followed) must exist inside the checkout
  r=$(realpath -e -- "$1" 2>/dev/null) || return 1
  case "$r" in "$src"|"$src"/*) printf '%s' "$r" ;; *) return 1 ;; esac
}
ov="$src/overlays/${OVERLAY:-}"
if [ -n "${OVERLAY:-}" ] && ! [ -e "$ov" ] && ! [ -L "$ov" ]; then
  echo "==> overlay $OVERLAY: no overlays/$OVERLAY folder; the repository is built as it is"
elif [ -n "${OVERLAY:-}" ]; then
  # AICoE-CI's rule: the root Pipfile and Pipfile.lock go, overlays/<name>/* is copied over
  echo "==> overlay $OVERLAY: overlays/$OVERLAY/* copied to the root (root Pipfile* removed)"
  od=$(inside "$src/overlays/$OVERLAY") && test -d "$od" ||
    fail "overlay '$OVERLAY': overlays/$OVERLAY is not a folder inside the repository"
  rm -f -- "$src/Pipfile" "$src/Pipfile.lock"
  for f in "$od"/*; do
    if [ -e "$f" ] || [ -L "$f" ]; then cp -R -- "$f" "$src/"; fi
  done
fi
# Base images: the Dockerfile's FROM lines are read as data (never evaluated) and each image
# is pulled once before the build, without retries, so that an image the cluster cannot pull
# fails the build at once with the registry's answer in the record's message.
base_images() {  # $1: a Dockerfile; prints its FROM images, stages and scratch left out
  set -f; df=$1; stages=" "; args=""; seen_from=""; cont=""
  while IFS= read -r line || [ -n "$line" ]; do
    was=$cont; cont=""
    case "$line" in *'\') cont=1 ;; esac
    [ -z "$was" ] || continue  # a continuation line is not an instruction
    set -- $line
    [ $# -gt 0 ] || continue
    case "$1" in
      [Aa][Rr][Gg])  # an ARG default before the first FROM may name the image
        if [ -z "$seen_from" ] && [ $# -ge 2 ]; then
          case "$2" in *=*) args="$args $2" ;; esac
        fi ;;
      [Ff][Rr][Oo][Mm])
        seen_from=1; shift
        while [ $# -gt 0 ]; do case "$1" in --*) shift ;; *) break ;; esac; done
        # FROM image [AS name], nothing else (e.g. not a heredoc's "from x import y")
        [ $# -eq 1 ] || { [ $# -eq 3 ] && case "$2" in [Aa][Ss]) true ;; *) false ;; esac; } ||
          continue
        img=$1
        case "$img" in
          '$'*)  # exactly $NAME or ${NAME}: its ARG default, else left to the build
            name=${img#'$'}; name=${name#'{'}; name=${name%'}'}; img=""
            for kv in $args; do
              if [ "${kv%%=*}" = "$name" ]; then img=${kv#*=}; img=${img#'"'}; img=${img%'"'}; fi
            done ;;
        esac
        case "$img" in
          ''|*'$'*|[Ss][Cc][Rr][Aa][Tt][Cc][Hh]) ;;
          *) case "$stages" in *" $img "*) ;; *) printf '%s\n' "$img" ;; esac ;;
        esac
        if [ $# -ge 3 ]; then case "$2" in [Aa][Ss]) stages="$stages$3 " ;; esac; fi ;;
    esac
  done < "$df"
  set +f
}
pulled=" "
pull_base() {  # $1: an image; pulled once, with no retries, else the build fails naming it
  case "$pulled" in *" $1 "*) return 0 ;; esac
  echo "==> pulling base image $1"
  limit=${PULL_TIMEOUT:-600}
  if ! err=$(timeout "$limit" buildah $B pull -q --retry 0 $TLS -- "$1" 2>&1 >/dev/null); then
    err=$(printf '%s\n' "$err" | grep -v '^[[:space:]]*$' | tail -n 3 | tr '\n' ' ')
    fail "base image $1 cannot be pulled: ${err:-no answer within $limit s}"
  fi
  pulled="$pulled$1 "
}
ctx=$(inside "$src/${CONTEXT_DIR:-.}") && test -d "$ctx" || {
  echo "context_dir '$CONTEXT_DIR' is not a directory inside the repository"; exit 2; }
if [ "$STRATEGY" = source ]; then
  echo "==> source strategy: builder image $BASE_IMAGE"
  pull_base "$BASE_IMAGE"
  fmt='{{index .OCIv1.Config.Labels "io.openshift.s2i.scripts-url"}}'
  url=$(buildah $B inspect --type image --format "$fmt" -- "$BASE_IMAGE" || true)
  scripts=$DEFAULT_SCRIPTS
  case "$url" in
    image:///*) scripts=${url#image://} ;;
  esac
  case "$scripts" in
    *[!A-Za-z0-9._/-]*|*..*|*//*)
      echo "ignoring the builder image's unsafe scripts-url label"; scripts=$DEFAULT_SCRIPTS ;;
  esac
  # substitute @S2I_SCRIPTS@ by parameter expansion (data only)
  rest=$S2I_DOCKERFILE; out=""
  while :; do
    case "$rest" in
      *@S2I_SCRIPTS@*) out="$out${rest%%@S2I_SCRIPTS@*}$scripts"; rest=${rest#*@S2I_SCRIPTS@} ;;
      *) break ;;
    esac
  done
  printf '%s%s' "$out" "$rest" > "$work/Dockerfile.s2i"
  file="$work/Dockerfile.s2i"
elif [ "$STRATEGY" = environment ]; then
  echo "==> environment build on $BASE_IMAGE, decided by: ${DECIDED_BY:-(no environment files)}"
  printf '%s' "$GENERATED_DOCKERFILE" > "$work/Dockerfile.env"
  file="$work/Dockerfile.env"
else
  file=$(inside "$src/$DOCKERFILE") && test -f "$file" || {
    echo "Dockerfile '$DOCKERFILE' is not a file inside the repository"; exit 2; }
fi
bud() {  # $1: a Dockerfile, $2: the image it makes; a failure fails the build saying why
  { r=0; buildah $B bud --isolation chroot $TLS --layers=false --cap-drop=all \
      --cap-add="$STEP_CAPS" -f "$1" -t "$2" "$ctx" || r=$?; echo "$r" > "$work/bud.rc"; } 2>&1 |
    tee "$work/bud.log"
  r=$(cat "$work/bud.rc")
  if [ "$r" != 0 ]; then  # a step of ours says why (aicoe-env); else buildah's last error
    why=$(sed -n 's/^aicoe-build-error: //p' "$work/bud.log" | tail -n 1)
    last=$(grep -i 'error' "$work/bud.log" | tail -n 1)
    [ -n "$why" ] || why="the image build failed (buildah exit code $r): $last"
    fail "$why"
  fi
}
# The environment image (environment builds, when the builder keeps one): the generated
# Dockerfile's part above ENV_MARKER, named by a hash of that text, of the files it copies and
# of the base image's manifest; reused from CACHE_REPO by every commit whose environment is
# the same, else built here and pushed there by the push step.
env_key=""
if [ -n "${CACHE_REPO:-}" ] && [ "$STRATEGY" = environment ]; then
  part=env; : > "$work/env.df"; : > "$work/app.df"
  while IFS= read -r line || [ -n "$line" ]; do
    if [ "$line" = "$ENV_MARKER" ]; then part=app; continue; fi
    printf '%s\n' "$line" >> "$work/$part.df"
  done < "$file"
  if [ "$part" = app ]; then
    {
      cat "$work/env.df"
      set -f
      while IFS= read -r line; do
        set -- $line
        case "$1" in
          COPY) c=$(inside "$ctx/$3") && sha256sum < "$c" || echo "missing $3" ;;
          FROM) case "$2" in
              *@sha256:*) echo "$2" ;;
              *) if command -v skopeo >/dev/null 2>&1 &&
                  m=$(skopeo inspect --raw $TLS -- "docker://$2" 2>/dev/null); then
                  printf '%s' "$m" | sha256sum
                else unpinned=$2; fi ;;
            esac ;;
        esac
      done < "$work/env.df"
      set +f
    } > "$work/env.key"
    env_key=$(sha256sum < "$work/env.key" | cut -c 1-40)
    if [ -n "${unpinned:-}" ]; then
      echo "==> environment image: none (the tag of $unpinned cannot be resolved to a digest)"
      env_key=""
    fi
  fi
fi
if [ -n "$env_key" ]; then
  env_image="$CACHE_REPO:env-$env_key"
  if buildah $B pull -q --retry 0 $TLS -- "$env_image" >/dev/null 2>&1; then
    echo "==> environment image: reused $env_image (the environment files are unchanged)"
    env_from=$env_image
  else
    echo "==> environment image: $env_image is new; building it"
    base_images "$work/env.df" > "$work/base-images"
    while IFS= read -r img; do pull_base "$img"; done < "$work/base-images"
    bud "$work/env.df" aicoe-build/env
    env_from=localhost/aicoe-build/env
    printf '%s\n' "$env_image" > "$work/env-image"
  fi
  { printf 'FROM %s\n' "$env_from"; cat "$work/app.df"; } > "$work/Dockerfile.app"
  echo "==> building $OUTPUT_IMAGE"
  bud "$work/Dockerfile.app" aicoe-build/image
else
  base_images "$file" > "$work/base-images"
  while IFS= read -r img; do pull_base "$img"; done < "$work/base-images"
  echo "==> building $OUTPUT_IMAGE"
  bud "$file" aicoe-build/image
fi
"""
    + CHECK_SCRIPT
    + r"""rm -rf "$WORKSPACE/layout" "$WORKSPACE/env-image"
buildah $B push -q aicoe-build/image "oci:$WORKSPACE/layout:image"
if [ -s "$work/env-image" ]; then  # a new environment image: the push step keeps it
  buildah $B push -q aicoe-build/env "oci:$WORKSPACE/layout:env"
  cp "$work/env-image" "$WORKSPACE/env-image"
fi
echo "==> built; the push step uploads it"
"""
)

# Never runs user content: pushes the OCI layout the build step wrote. With skopeo (the
# project's builder image) straight from the layout: its compressed layers as they are, and
# the layers the registry already has (the base image's, on a rebuild) are not sent again.
# Without it (e.g. quay.io/buildah/stable), buildah loads the layout and pushes the image.
PUSH_SCRIPT = r"""set -eu
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
"""


# Capabilities of the Dockerfile's RUN steps: the default set of container runtimes less
# NET_RAW, NET_BIND_SERVICE, AUDIT_WRITE, SETPCAP and MKNOD.
STEP_CAPABILITIES = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETFCAP",
    "SETGID",
    "SETUID",
    "SYS_CHROOT",
]


@dataclass(frozen=True)
class JobConfig:
    builder_image: str = "quay.io/buildah/stable:v1.37"
    push_secret: str | None = None  # a kubernetes.io/dockerconfigjson Secret
    tls_verify: bool = True
    timeout_seconds: int = 3600
    ttl_seconds_after_finished: int = 600
    check_image: bool = True  # run the image check (image_check.py) before pushing
    hub_version: str = ""  # the hub's JupyterHub version; "" = not known (major not compared)
    service_account: str | None = None
    namespace: str | None = None  # where build Jobs run (default: the builder's namespace)
    storage_size: str = "20Gi"  # sizeLimit of each emptyDir and the ephemeral-storage limit
    node_selector: dict[str, str] = field(default_factory=dict)  # of build pods
    tolerations: list[dict[str, Any]] = field(default_factory=list)  # of build pods
    resources: dict[str, Any] = field(
        default_factory=lambda: {
            "requests": {"cpu": "500m", "memory": "1Gi"},
            "limits": {"cpu": "2", "memory": "4Gi"},
        }
    )


def job_name(build_id: str) -> str:
    return object_name(build_id)


def job_namespace(spec: BuildSpec, config: JobConfig) -> str:
    return config.namespace or spec.namespace


def job_manifest(spec: BuildSpec, config: JobConfig) -> dict[str, Any]:
    common = {
        "OUTPUT_IMAGE": spec.output_image,
        "TLS_VERIFY": "true" if config.tls_verify else "false",
        "WORKSPACE": WORKSPACE,
    }
    build_env = {
        **common,
        "REPO": spec.repo,
        "REF": spec.ref,
        "COMMIT": spec.commit,
        "STRATEGY": spec.strategy,
        "DOCKERFILE": spec.dockerfile,
        "CONTEXT_DIR": spec.context_dir,
        "BASE_IMAGE": spec.base_image,
        "BUILD_STORAGE": BUILD_STORAGE,
        "DEFAULT_SCRIPTS": DEFAULT_SCRIPTS,
        "STEP_CAPS": ",".join(STEP_CAPABILITIES),
        "GIT_ALLOW_PROTOCOL": "https" if spec.repo.startswith("https:") else "http",
        "GIT_TERMINAL_PROMPT": "0",
        "CHECK_IMAGE": "true" if config.check_image else "false",
        "HUB_VERSION": config.hub_version,
        "CHECK_PROBE": PROBE,
        "CHECK_REPORT": REPORT_PY,
    }
    if spec.overlay:
        build_env["OVERLAY"] = spec.overlay
    if spec.strategy == "source":
        build_env["S2I_DOCKERFILE"] = s2i_dockerfile(
            spec.base_image,
            {
                "io.openshift.build.source-location": spec.repo,
                "io.openshift.build.commit.id": spec.commit,
                "io.openshift.build.commit.ref": spec.ref,
            },
            spec.build_env,
        )
    if spec.strategy == "environment":
        build_env["GENERATED_DOCKERFILE"] = spec.generated_dockerfile
        build_env["DECIDED_BY"] = " ".join(spec.decided_by)
    if spec.layer_cache:
        build_env["CACHE_REPO"] = spec.layer_cache
        build_env["ENV_MARKER"] = ENVIRONMENT_MARKER
    repo = spec.output_image.rsplit(":", 1)[0]
    push_env = {
        **common,
        "PUSH_STORAGE": PUSH_STORAGE,
        "EXTRA_IMAGES": " ".join(f"{repo}:{t}" for t in spec.extra_tags),
    }
    if spec.layer_cache:
        push_env["CACHE_REPO"] = spec.layer_cache
    size = config.storage_size
    volumes: list[dict[str, Any]] = [
        {"name": name, "emptyDir": {"sizeLimit": size}}
        for name in ("workspace", "build-storage", "push-storage")
    ]
    push_mounts = [
        {"name": "workspace", "mountPath": WORKSPACE, "readOnly": True},
        {"name": "push-storage", "mountPath": PUSH_STORAGE},
    ]
    # the destination's push Secret (None: the builder's own), in the push step alone
    push_secret = config.push_secret if spec.push_secret is None else spec.push_secret
    if push_secret:
        push_env["REGISTRY_AUTH_FILE"] = PUSH_AUTH_FILE
        volumes.append({"name": "push-secret", "secret": {"secretName": push_secret}})
        push_mounts.append(
            {"name": "push-secret", "mountPath": "/var/run/secrets/push", "readOnly": True}
        )
    # request at most 1Gi of the node's disk for scheduling; the limit is the sized storage
    request = size if parse_memory(size) < parse_memory("1Gi") else "1Gi"
    resources = {
        "requests": {**config.resources.get("requests", {}), "ephemeral-storage": request},
        "limits": {**config.resources.get("limits", {}), "ephemeral-storage": size},
    }
    # What buildah needs under seccomp RuntimeDefault, found on the real node (docs/deploy.md,
    # tests/node): SYS_ADMIN, or buildah takes itself for rootless and calls
    # unshare(CLONE_NEWUSER), which RuntimeDefault refuses; MKNOD to unpack base layers that
    # hold device nodes; the rest for RUN steps, which get exactly STEP_CAPABILITIES.
    security = {
        "privileged": False,
        "capabilities": {"drop": ["ALL"], "add": [*STEP_CAPABILITIES, "MKNOD", "SYS_ADMIN"]},
    }
    build = {
        "name": "build",
        "image": config.builder_image,
        "command": ["/bin/sh", "-c", BUILD_SCRIPT],
        "env": [{"name": k, "value": v} for k, v in build_env.items()],
        "resources": resources,
        "securityContext": security,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "workspace", "mountPath": WORKSPACE},
            {"name": "build-storage", "mountPath": BUILD_STORAGE},
        ],
    }
    push = {
        "name": "push",
        "image": config.builder_image,
        "command": ["/bin/sh", "-c", PUSH_SCRIPT],
        "env": [{"name": k, "value": v} for k, v in push_env.items()],
        "resources": resources,
        "securityContext": security,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "volumeMounts": push_mounts,
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "initContainers": [build],
        "containers": [push],
        "volumes": volumes,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }
    if spec.pull_secret:
        # for the kubelet (the pod's own images); never a file in a container: the build
        # step pulls without credentials (docs/builder.md#per-project-destinations)
        pod_spec["imagePullSecrets"] = [{"name": spec.pull_secret}]
    if config.service_account:
        pod_spec["serviceAccountName"] = config.service_account
    if config.node_selector:
        pod_spec["nodeSelector"] = dict(config.node_selector)
    if config.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in config.tolerations]
    labels = build_labels(spec)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(spec.job_id),
            "namespace": job_namespace(spec, config),
            "labels": labels,
            "annotations": build_annotations(spec),
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": config.timeout_seconds,
            "ttlSecondsAfterFinished": config.ttl_seconds_after_finished,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def _terminated(pods: list[dict]) -> dict | None:
    """The termination of a failed build step, else of the push step."""
    for key in ("initContainerStatuses", "containerStatuses"):
        for pod in pods:
            for status in pod.get("status", {}).get(key) or []:
                term = (status.get("state") or {}).get("terminated")
                if term and (key == "containerStatuses" or term.get("exitCode")):
                    return term
    return None


def job_state(job: dict | None, pods: list[dict]) -> BackendState:
    """The build phase from a Job and its pods (pure)."""
    if job is None:
        return BackendState(BuildPhase.PENDING, "build job not created yet")
    status = job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    term = _terminated(pods)
    message = ((term or {}).get("message") or "").strip()
    if (conditions.get("Complete") or {}).get("status") == "True" or (
        status.get("succeeded") or 0
    ) > 0:
        digest, software, dependencies = parse_termination(message)
        if digest is None:
            return BackendState(BuildPhase.FAILED, "build succeeded but reported no image digest")
        return BackendState(
            BuildPhase.READY, "", digest, software=software, dependencies=dependencies
        )
    failed = conditions.get("Failed")
    if (failed or {}).get("status") == "True" or (status.get("failed") or 0) > 0:
        reason = (failed or {}).get("reason") or ""
        if reason == "DeadlineExceeded":
            return BackendState(BuildPhase.FAILED, "build timed out\n" + message)
        exit_code = (term or {}).get("exitCode")
        head = f"build failed (exit code {exit_code})" if exit_code is not None else "build failed"
        return BackendState(
            BuildPhase.FAILED, f"{head}\n{message or (failed or {}).get('message', '')}"
        )
    if status.get("active") or status.get("startTime") or pods:
        return BackendState(BuildPhase.BUILDING)
    return BackendState(BuildPhase.PENDING, "waiting for the build pod")


class KubernetesBackend(Backend):
    """A Job per build (:func:`job_manifest`); its state from the Job and its pod."""

    name = "kubernetes"
    writes_stream_status = True  # no image controller writes the ImageStream status
    imports_images = False  # the builder's import loop imports external images
    follows_logs = True

    def __init__(
        self, api: client.ApiClient, config: JobConfig, log_reader: LogReader | None = None
    ) -> None:
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.config = config
        # Asks the hub's version when the config has none (the image check compares majors);
        # learned once, at the first build that finds the hub answering.
        self.hub_version_lookup: Callable[[], Awaitable[str | None]] | None = None
        self.log_reader = log_reader or self._read_pod_log

    @classmethod
    def from_settings(cls, api, settings, log_reader=None) -> KubernetesBackend:
        s = settings
        return cls(
            api,
            JobConfig(
                builder_image=s.builder_image,
                push_secret=s.push_secret,
                tls_verify=s.tls_verify,
                timeout_seconds=s.timeout,
                namespace=s.build_namespace,
                storage_size=s.build_storage,
                node_selector=dict(s.build_node_selector),
                tolerations=list(s.build_tolerations),
                check_image=s.check_image,
                hub_version=s.hub_version,
            ),
            log_reader=log_reader,
        )

    def _ns(self, spec: BuildSpec) -> str:
        return job_namespace(spec, self.config)

    async def submit(self, spec: BuildSpec) -> None:
        if self.config.check_image and not self.config.hub_version and self.hub_version_lookup:
            version = await self.hub_version_lookup()
            if version:
                self.config = replace(self.config, hub_version=version)
        await create_once(
            self.batch.create_namespaced_job(self._ns(spec), job_manifest(spec, self.config))
        )

    async def _job(self, spec: BuildSpec) -> dict | None:
        return await or_none(
            raw_json(
                self.batch.read_namespaced_job(
                    job_name(spec.job_id), self._ns(spec), _preload_content=False
                )
            )
        )

    async def _pods(self, spec: BuildSpec) -> list[dict]:
        pods = await raw_json(
            self.core.list_namespaced_pod(
                self._ns(spec),
                label_selector=f"job-name={job_name(spec.job_id)}",
                _preload_content=False,
            )
        )
        return pods["items"]

    async def _read_pod_log(
        self, namespace: str, pod: str, container: str | None = None
    ) -> str | None:
        try:
            return await self.core.read_namespaced_pod_log(
                pod, namespace, container=container, limit_bytes=1 << 20
            )
        except Exception:
            return None

    async def state(self, spec: BuildSpec, *, with_log: bool = True) -> BackendState:
        job, pods = await asyncio.gather(self._job(spec), self._pods(spec))
        state = job_state(job, pods)
        text = await self._pod_log(spec, pods) if with_log else None
        if text is not None:
            state = replace(state, log=text)
        return state

    async def _pod_log(self, spec: BuildSpec, pods: list[dict]) -> str | None:
        if not pods:
            return None
        name, ns = pods[0]["metadata"]["name"], self._ns(spec)
        parts = [await self.log_reader(ns, name, c) for c in STEPS]
        if any(p is not None for p in parts):
            return "".join(p for p in parts if p)
        return None

    async def read_log(self, spec: BuildSpec) -> str | None:
        return await self._pod_log(spec, await self._pods(spec))

    def watched(self, namespace: str) -> list[Watched]:
        ns = self.config.namespace or namespace
        return [
            Watched("jobs", self.batch.list_namespaced_job, (ns,), _job_of_job, _managed),
            Watched("build pods", self.core.list_namespaced_pod, (ns,), _job_of_pod, _managed),
        ]

    async def follow_log(self, spec: BuildSpec) -> AsyncIterator[str]:
        """The build pod's steps (``build``, then ``push``) one after the other, each with
        ``follow=true`` (the kubelet streams it as it is written). A harness that plays the
        kubelet (``log_reader`` given) is read again every half second instead."""
        ns, pod, done = self._ns(spec), None, ""
        while pod is None:
            pods = await self._pods(spec)
            if pods:
                pod = pods[0]["metadata"]["name"]
            else:
                await asyncio.sleep(1.0)
        for step in STEPS:
            text = ""
            async for text in self._follow_step(ns, pod, step):
                yield done + text
            done += text

    async def _follow_step(self, ns: str, pod: str, step: str) -> AsyncIterator[str]:
        if self.log_reader != self._read_pod_log:
            seen: str | None = None
            while True:
                text = await self.log_reader(ns, pod, step)
                if text is not None and text != seen:
                    seen = text
                    yield text
                await asyncio.sleep(0.5)
        text = ""
        while True:
            try:
                response = await self.core.read_namespaced_pod_log(
                    pod, ns, container=step, follow=True, _preload_content=False
                )
            except ApiException as e:
                if e.status == 400:  # the step has not started yet
                    await asyncio.sleep(1.0)
                    continue
                return  # the pod is gone
            async with response:
                text = ""
                async for chunk in response.content.iter_any():
                    text += chunk.decode(errors="replace")
                    if len(text) > 1 << 20:
                        text = text[-(1 << 20) :]
                    yield text
            return

    async def exists(self, spec: BuildSpec) -> bool:
        return await self._job(spec) is not None

    async def cancel(self, spec: BuildSpec) -> None:
        await self.cleanup(spec)

    async def cleanup(self, spec: BuildSpec) -> None:
        await self.delete_object(spec.namespace, job_name(spec.job_id))

    def validate(self, spec: BuildSpec) -> None:
        """Every valid spec can be built by a Job."""

    async def finished_objects(self, namespace: str) -> list[tuple[str, str]]:
        """(name, finish time) of this builder's finished Jobs (in the build namespace when
        one is configured, else in ``namespace``)."""
        jobs = await raw_json(
            self.batch.list_namespaced_job(
                self.config.namespace or namespace,
                label_selector=MANAGED_SELECTOR,
                _preload_content=False,
            )
        )
        out = []
        for job in jobs["items"]:
            status = job.get("status") or {}
            ends = [
                c.get("lastTransitionTime") or ""
                for c in status.get("conditions") or []
                if c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
            ]
            if ends:
                out.append((job["metadata"]["name"], status.get("completionTime") or max(ends)))
        return out

    async def delete_object(self, namespace: str, name: str) -> None:
        namespace = self.config.namespace or namespace
        await ignore_not_found(
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        )
        await ignore_not_found(
            self.core.delete_collection_namespaced_pod(namespace, label_selector=f"job-name={name}")
        )


STEPS = ("build", "push")  # the build pod's containers, in the order they run
_managed = {"label_selector": MANAGED_SELECTOR}


def _job_of_job(job: dict) -> str | None:
    name = job.get("metadata", {}).get("name") or ""
    return job_id_of(name) if name.startswith(job_name("")) else None


def _job_of_pod(pod: dict) -> str | None:
    return _job_of_job(
        {"metadata": {"name": (pod["metadata"].get("labels") or {}).get("job-name")}}
    )


__all__ = [
    "MANAGED_BY",
    "BackendState",
    "JobConfig",
    "KubernetesBackend",
    "build_annotations",
    "build_labels",
    "job_manifest",
    "job_name",
    "job_namespace",
    "job_state",
]
