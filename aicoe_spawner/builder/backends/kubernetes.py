"""The Kubernetes backend: one Job per build running buildah (pure manifests + state, and a
thin async shell). The container writes the pushed digest (buildah ``--digestfile``) to its
termination message; on failure the kubelet puts the log tail there
(``FallbackToLogsOnError``)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from ..kube import raw_json
from ..requests import BuildSpec, repo_hash, user_label
from ..source import s2i_dockerfile
from . import BackendState

log = logging.getLogger("aicoe_spawner.builder.kubernetes")

MANAGED_BY = "aicoe-image-builder"
L = "aicoe-spawner.io/"

BUILD_SCRIPT = r"""set -eu
B="--storage-driver vfs ${BUILDAH_ROOT:+--root $BUILDAH_ROOT/root --runroot $BUILDAH_ROOT/run}"
TLS="--tls-verify=${TLS_VERIFY:-true}"
work=$(mktemp -d)
echo "==> fetching $REPO at $COMMIT"
git init -q "$work/src"
cd "$work/src"
git fetch -q --depth 1 -- "$REPO" "$COMMIT" 2>/dev/null || git fetch -q --depth 1 -- "$REPO" "$REF"
git -c advice.detachedHead=false checkout -q FETCH_HEAD
got=$(git rev-parse HEAD)
test "$got" = "$COMMIT" || { echo "commit mismatch: got $got"; exit 2; }
ctx="$work/src/${CONTEXT_DIR:-.}"
test -d "$ctx" || { echo "context dir $CONTEXT_DIR not found"; exit 2; }
if [ "$STRATEGY" = source ]; then
  echo "==> source strategy: builder image $BASE_IMAGE"
  buildah $B pull -q $TLS "$BASE_IMAGE" >/dev/null
  fmt='{{index .OCIv1.Config.Labels "io.openshift.s2i.scripts-url"}}'
  url=$(buildah $B inspect --type image --format "$fmt" "$BASE_IMAGE" || true)
  case "$url" in image:///*) scripts=${url#image://} ;; *) scripts=/usr/libexec/s2i ;; esac
  printf '%s' "$S2I_DOCKERFILE" | sed "s#@S2I_SCRIPTS@#$scripts#g" > "$work/Dockerfile.s2i"
  file="$work/Dockerfile.s2i"
else
  file="$work/src/$DOCKERFILE"
  test -f "$file" || { echo "Dockerfile $DOCKERFILE not found"; exit 2; }
fi
echo "==> building $OUTPUT_IMAGE"
buildah $B bud --isolation chroot $TLS --layers=false -f "$file" -t "$OUTPUT_IMAGE" "$ctx"
echo "==> pushing $OUTPUT_IMAGE"
buildah $B push $TLS --digestfile "$work/digest" "$OUTPUT_IMAGE"
digest=$(cat "$work/digest")
printf '%s' "$digest" > "${TERMINATION_LOG:-/dev/termination-log}"
echo "==> pushed $OUTPUT_IMAGE@$digest"
"""


@dataclass(frozen=True)
class JobConfig:
    builder_image: str = "quay.io/buildah/stable:v1.37"
    push_secret: str | None = None  # a kubernetes.io/dockerconfigjson Secret
    tls_verify: bool = True
    timeout_seconds: int = 3600
    ttl_seconds_after_finished: int = 600
    service_account: str | None = None
    resources: dict[str, Any] = field(
        default_factory=lambda: {
            "requests": {"cpu": "500m", "memory": "1Gi"},
            "limits": {"cpu": "2", "memory": "4Gi"},
        }
    )


def job_name(build_id: str) -> str:
    return f"imgbuild-{build_id}"


def build_labels(spec: BuildSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        f"{L}build-id": spec.id,
        f"{L}repo-hash": repo_hash(spec.repo),
        f"{L}commit": spec.commit[:63],
        f"{L}requester": user_label(spec.requester),
    }


def build_annotations(spec: BuildSpec) -> dict[str, str]:
    return {
        f"{L}repo": spec.repo,
        f"{L}ref": spec.ref,
        f"{L}commit": spec.commit,
        f"{L}requester": spec.requester,
        f"{L}image": spec.image,
        f"{L}output-image": spec.output_image,
    }


def job_manifest(spec: BuildSpec, config: JobConfig) -> dict[str, Any]:
    env = {
        "REPO": spec.repo,
        "REF": spec.ref,
        "COMMIT": spec.commit,
        "STRATEGY": spec.strategy,
        "DOCKERFILE": spec.dockerfile,
        "CONTEXT_DIR": spec.context_dir,
        "BASE_IMAGE": spec.base_image,
        "OUTPUT_IMAGE": spec.output_image,
        "TLS_VERIFY": "true" if config.tls_verify else "false",
        "GIT_ALLOW_PROTOCOL": "https" if spec.repo.startswith("https:") else "http",
        "GIT_TERMINAL_PROMPT": "0",
    }
    if spec.strategy == "source":
        env["S2I_DOCKERFILE"] = s2i_dockerfile(
            spec.base_image,
            {
                "io.openshift.build.source-location": spec.repo,
                "io.openshift.build.commit.id": spec.commit,
                "io.openshift.build.commit.ref": spec.ref,
            },
        )
    volumes, mounts = [], []
    if config.push_secret:
        env["REGISTRY_AUTH_FILE"] = "/var/run/secrets/push/.dockerconfigjson"
        volumes.append({"name": "push-secret", "secret": {"secretName": config.push_secret}})
        mounts.append({"name": "push-secret", "mountPath": "/var/run/secrets/push"})
    container = {
        "name": "build",
        "image": config.builder_image,
        "command": ["/bin/sh", "-c", BUILD_SCRIPT],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "resources": config.resources,
        "securityContext": {"privileged": False, "capabilities": {"add": ["SETUID", "SETGID"]}},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": volumes,
        "automountServiceAccountToken": False,
    }
    if config.service_account:
        pod_spec["serviceAccountName"] = config.service_account
    labels = build_labels(spec)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(spec.id),
            "namespace": spec.namespace,
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
    for pod in pods:
        for status in pod.get("status", {}).get("containerStatuses") or []:
            term = (status.get("state") or {}).get("terminated")
            if term:
                return term
    return None


def job_state(job: dict | None, pods: list[dict]) -> BackendState:
    """The build phase from a Job and its pods (pure)."""
    if job is None:
        return BackendState("pending", "build job not created yet")
    status = job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    term = _terminated(pods)
    message = ((term or {}).get("message") or "").strip()
    if (conditions.get("Complete") or {}).get("status") == "True" or (
        status.get("succeeded") or 0
    ) > 0:
        digest = message if message.startswith("sha256:") and len(message) == 71 else None
        if digest is None:
            return BackendState("failed", "build succeeded but reported no image digest")
        return BackendState("ready", "", digest)
    failed = conditions.get("Failed")
    if (failed or {}).get("status") == "True" or (status.get("failed") or 0) > 0:
        reason = (failed or {}).get("reason") or ""
        if reason == "DeadlineExceeded":
            return BackendState("failed", "build timed out\n" + message)
        exit_code = (term or {}).get("exitCode")
        head = f"build failed (exit code {exit_code})" if exit_code is not None else "build failed"
        return BackendState("failed", f"{head}\n{message or (failed or {}).get('message', '')}")
    if status.get("active") or status.get("startTime") or pods:
        return BackendState("building")
    return BackendState("pending", "waiting for the build pod")


class KubernetesBackend:
    name = "kubernetes"

    def __init__(self, api: client.ApiClient, config: JobConfig, log_reader=None) -> None:
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.config = config
        # Reads a pod's log: the kubelet's log API by default; a test harness playing the
        # kubelet passes its own.
        self.log_reader = log_reader or self._read_pod_log

    async def submit(self, spec: BuildSpec) -> None:
        try:
            await self.batch.create_namespaced_job(spec.namespace, job_manifest(spec, self.config))
        except ApiException as e:
            if e.status != 409:  # another replica (or an earlier attempt) created it
                raise

    async def _job(self, spec: BuildSpec) -> dict | None:
        try:
            return await raw_json(
                self.batch.read_namespaced_job(
                    job_name(spec.id), spec.namespace, _preload_content=False
                )
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def _pods(self, spec: BuildSpec) -> list[dict]:
        pods = await raw_json(
            self.core.list_namespaced_pod(
                spec.namespace,
                label_selector=f"job-name={job_name(spec.id)}",
                _preload_content=False,
            )
        )
        return pods["items"]

    async def _read_pod_log(self, namespace: str, pod: str) -> str | None:
        try:
            return await self.core.read_namespaced_pod_log(pod, namespace, limit_bytes=1 << 20)
        except (ApiException, Exception):
            return None

    async def state(self, spec: BuildSpec) -> BackendState:
        job, pods = await asyncio.gather(self._job(spec), self._pods(spec))
        state = job_state(job, pods)
        text = None
        if pods:
            text = await self.log_reader(spec.namespace, pods[0]["metadata"]["name"])
        if text is not None:
            state = BackendState(state.phase, state.message, state.digest, state.image_ref, text)
        return state

    async def exists(self, spec: BuildSpec) -> bool:
        return await self._job(spec) is not None

    async def cancel(self, spec: BuildSpec) -> None:
        await self.cleanup(spec)

    async def cleanup(self, spec: BuildSpec) -> None:
        try:
            await self.batch.delete_namespaced_job(
                job_name(spec.id), spec.namespace, propagation_policy="Background"
            )
        except ApiException as e:
            if e.status != 404:
                raise
        try:
            await self.core.delete_collection_namespaced_pod(
                spec.namespace, label_selector=f"job-name={job_name(spec.id)}"
            )
        except ApiException as e:
            if e.status != 404:
                raise

    def validate(self, spec: BuildSpec) -> None:
        """Every valid spec can be built by a Job."""

    async def finished_objects(self, namespace: str) -> list[tuple[str, str]]:
        """(name, finish time) of this builder's finished Jobs in ``namespace``."""
        jobs = await raw_json(
            self.batch.list_namespaced_job(
                namespace,
                label_selector=f"app.kubernetes.io/managed-by={MANAGED_BY}",
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
        try:
            await self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except ApiException as e:
            if e.status != 404:
                raise
        try:
            await self.core.delete_collection_namespaced_pod(
                namespace, label_selector=f"job-name={name}"
            )
        except ApiException as e:
            if e.status != 404:
                raise
