"""The Kubernetes backend's build Job, pure: its manifest (:func:`job_manifest`, the step
scripts ``build-step.sh``, ``push-step.sh`` and ``keep-step.sh`` shipped next to this
module) and the build's state read from the Job and its pods (:func:`job_state`).

The build pod has two steps. The init container ``build`` fetches the commit and runs the
user's Dockerfile (or the s2i-equivalent one) with buildah, writing the image as an OCI layout
to a sized emptyDir; it has no credentials. The container ``push`` never runs user content: it
pushes the layout with the push secret, and writes the pushed digest (buildah
``--digestfile``) to its termination message. With a node image store, the container
``keep`` runs beside it (no user content either) and keeps a new environment image on the
node; the build ends with the pod, keep step included (the build limits hold for it too).
The pod runs with seccomp RuntimeDefault, no service-account token, and ephemeral-storage
limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from ...options import parse_memory
from ..environment import ENVIRONMENT_MARKER
from ..image_check import CHECK_SCRIPT, PROBE, REPORT_PY, parse_termination
from ..requests import BuildSpec
from ..source import s2i_dockerfile
from ..vocabulary import MANAGED_BY, BuildPhase, build_annotations, build_labels, object_name
from .base import BackendState


def _script(name: str) -> str:
    """A step's shell script, shipped next to this module, without its header (the shebang
    and the comment lines after it)."""
    lines = (resources.files(__package__) / name).read_text().split("\n")
    start = 1
    while lines[start].startswith("#"):
        start += 1
    return "\n".join(lines[start:])


WORKSPACE = "/var/lib/aicoe-build"  # the shared emptyDir: the OCI layout of the image
BUILD_STORAGE = "/var/lib/aicoe-build-storage"  # buildah storage of the build step
PUSH_STORAGE = "/var/lib/aicoe-push-storage"  # buildah storage of the push step
DEFAULT_SCRIPTS = "/usr/libexec/s2i"
NODE_IMAGES = "/var/lib/aicoe-node-images"  # the node's image store (hostPath), if kept
PUSH_AUTH_FILE = "/var/run/secrets/push/.dockerconfigjson"  # in the push step only

# Runs user content (git checkout, Dockerfile steps). No credentials here. User-controlled
# text (paths, the base image's labels) is only ever data: quoted expansions, `case` patterns
# and realpath checks, never a shell or sed program.
BUILD_SCRIPT = _script("build-step.sh").replace("@CHECK_SCRIPT@\n", CHECK_SCRIPT)

# Never runs user content: pushes the OCI layout the build step wrote. With skopeo (the
# project's builder image) straight from the layout: its compressed layers as they are, and
# the layers the registry already has (the base image's, on a rebuild) are not sent again.
# Without it (e.g. quay.io/buildah/stable), buildah loads the layout and pushes the image.
PUSH_SCRIPT = _script("push-step.sh")

# Never runs user content: beside the push step, keeps a new environment image in the node's
# image store (JobConfig.node_image_store), within KEEP_TIMEOUT seconds.
KEEP_SCRIPT = _script("keep-step.sh")


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
    # a folder on each node where push steps keep new environment images, which build steps
    # on that node then use read-only instead of pulling them ("" = none)
    node_image_store: str = ""
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
    build_mounts = [
        {"name": "workspace", "mountPath": WORKSPACE},
        {"name": "build-storage", "mountPath": BUILD_STORAGE},
    ]
    keeps = bool(spec.layer_cache and config.node_image_store and spec.push_secret is None)
    if keeps:
        # written by the keep step (never runs user content), read-only where user content
        # runs; only for the builder's own registry, whose images every build pod may pull (a
        # project's private environment never lies where another's build could read it)
        store = {"path": config.node_image_store, "type": "DirectoryOrCreate"}
        volumes.append({"name": "node-images", "hostPath": store})
        build_mounts.append({"name": "node-images", "mountPath": NODE_IMAGES, "readOnly": True})
        build_env["NODE_IMAGES"] = NODE_IMAGES
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
        "volumeMounts": build_mounts,
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
    containers = [push]
    if keeps:
        keep_env = {
            "WORKSPACE": WORKSPACE,
            "PUSH_STORAGE": PUSH_STORAGE,
            "CACHE_REPO": spec.layer_cache,
            "NODE_IMAGES": NODE_IMAGES,
        }
        containers.append(
            {
                **push,
                "name": "keep",
                "command": ["/bin/sh", "-c", KEEP_SCRIPT],
                "env": [{"name": k, "value": v} for k, v in keep_env.items()],
                "volumeMounts": [
                    {"name": "workspace", "mountPath": WORKSPACE, "readOnly": True},
                    {"name": "push-storage", "mountPath": PUSH_STORAGE},
                    {"name": "node-images", "mountPath": NODE_IMAGES},
                ],
            }
        )
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "initContainers": [build],
        "containers": containers,
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
                if term and (
                    (key == "containerStatuses" and status.get("name", "push") == "push")
                    or (key == "initContainerStatuses" and term.get("exitCode"))
                ):
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


__all__ = [
    "MANAGED_BY",
    "BackendState",
    "JobConfig",
    "build_annotations",
    "build_labels",
    "job_manifest",
    "job_name",
    "job_namespace",
    "job_state",
]
