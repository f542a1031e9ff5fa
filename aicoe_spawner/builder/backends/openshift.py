"""The OpenShift backend: one BuildConfig + one Build (``build.openshift.io/v1``) per build,
Docker strategy (``dockerfilePath`` relative to ``contextDir``) or Source strategy (the builder
image as ``sourceStrategy.from``), output to the ImageStreamTag ``<stream>:<tag>``.

OpenShift's build controller runs the build and its image controller writes the pushed digest
into the ImageStream's status, so the builder only reads: the Build's ``status.phase`` and, on
``Complete``, the digest from the ImageStream status tag (else ``status.output.to.imageDigest``).
Manifests and status interpretation are pure functions; the class is a thin async shell.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from ..image_check import OPENSHIFT_HOOK, PROBE, REPORT_PY
from ..kube import create_once, ignore_not_found, or_none
from ..requests import BuildRequestError, BuildSpec
from ..vocabulary import MANAGED_SELECTOR, BuildPhase, build_annotations, build_labels, job_id_of
from ..vocabulary import object_name as _object_name
from .base import Backend, BackendState, LogReader, Watched

log = logging.getLogger("aicoe_spawner.builder.openshift")

GROUP, VERSION = "build.openshift.io", "v1"
IMAGE_GROUP = "image.openshift.io"
MERGE = "application/merge-patch+json"
BUILDING_PHASES = ("New", "Pending", "Running")
FAILED_PHASES = ("Failed", "Error")
TERMINAL_PHASES = ("Complete", "Failed", "Error", "Cancelled")
DIGEST_LEN = len("sha256:") + 64


def detect_backend(groups: Iterable[str]) -> str:
    """``openshift`` when the API server serves ``build.openshift.io``, else ``kubernetes``."""
    return "openshift" if GROUP in set(groups) else "kubernetes"


async def api_groups(api: client.ApiClient) -> list[str]:
    """The API group names the server announces (discovery, ``GET /apis``)."""
    groups = await client.ApisApi(api).get_api_versions()
    return [g.name for g in groups.groups or []]


async def choose_backend(api: client.ApiClient, setting: str) -> str:
    """``kubernetes`` | ``openshift`` as configured; ``auto`` asks discovery."""
    if setting != "auto":
        return setting
    return detect_backend(await api_groups(api))


def object_name(build_id: str) -> str:
    """BuildConfig and Build share the build's name (deterministic: replicas collide on 409)."""
    return _object_name(build_id)


def dockerfile_path(spec: BuildSpec) -> str:
    """OpenShift reads ``dockerfilePath`` relative to ``contextDir``; ours is relative to the
    repository root. A Dockerfile outside the context directory cannot be expressed."""
    ctx = spec.context_dir.strip("/")
    path = spec.dockerfile or "Dockerfile"
    if not ctx:
        return path
    if not path.startswith(ctx + "/"):
        raise BuildRequestError(
            "dockerfile",
            f"{path!r} is outside context_dir {ctx!r}; the OpenShift backend needs the "
            "Dockerfile inside the context directory",
        )
    return posixpath.relpath(path, ctx)


def validate_spec(spec: BuildSpec) -> None:
    """Raise BuildRequestError (400) for a spec this backend cannot build: a Dockerfile
    outside the context, and overlays of environment or Dockerfile builds (an OpenShift Build
    cannot run AICoE-CI's copy-in of ``overlays/<name>/*`` before the build), and repositories
    with a destination of their own (its Builds push to the integrated registry)."""
    if spec.strategy == "dockerfile":
        dockerfile_path(spec)
    if spec.mapped_destination:
        raise BuildRequestError(
            "repo",
            f"{spec.repo} has a destination of its own (ImageBuilder.destinations), and the "
            "OpenShift backend pushes to the cluster's ImageStreams only; use the kubernetes "
            "backend",
        )
    if spec.overlay and spec.strategy in ("dockerfile", "environment"):
        raise BuildRequestError(
            ".aicoe-ci.yaml overlays",
            f"overlay {spec.overlay!r}: the OpenShift backend cannot copy overlays/"
            f"{spec.overlay}/* to the root before the build; use the kubernetes backend",
        )


def post_commit(hub_version: str) -> dict[str, Any]:
    """The image check as a postCommit hook (run in the built image before the push)."""
    command = ["/bin/sh", "-c", OPENSHIFT_HOOK, "aicoe-check", PROBE, REPORT_PY, hub_version]
    return {"command": command}


def common_spec(
    spec: BuildSpec,
    timeout_seconds: int,
    service_account: str | None,
    check_hub_version: str | None = None,
) -> dict:
    """``check_hub_version``: run the image check (postCommit hook) against this hub version
    ("" unknown); None: no check."""
    source: dict[str, Any] = {"type": "Git", "git": {"uri": spec.repo, "ref": spec.commit}}
    if spec.context_dir:
        source["contextDir"] = spec.context_dir
    if spec.strategy == "source":
        strategy = {
            "type": "Source",
            "sourceStrategy": {"from": {"kind": "DockerImage", "name": spec.base_image}},
        }
        if spec.build_env:
            strategy["sourceStrategy"]["env"] = [{"name": k, "value": v} for k, v in spec.build_env]
    elif spec.strategy == "environment":
        # the generated Dockerfile, inline: OpenShift writes it into the checkout's context
        source["dockerfile"] = spec.generated_dockerfile
        strategy = {"type": "Docker", "dockerStrategy": {}}
    else:
        strategy = {"type": "Docker", "dockerStrategy": {"dockerfilePath": dockerfile_path(spec)}}
    out: dict[str, Any] = {
        "source": source,
        "strategy": strategy,
        "output": {
            "to": {"kind": "ImageStreamTag", "name": f"{spec.stream}:{spec.tag}"},
            "imageLabels": [
                {"name": "io.openshift.build.source-location", "value": spec.repo},
                {"name": "io.openshift.build.commit.id", "value": spec.commit},
                {"name": "io.openshift.build.commit.ref", "value": spec.ref},
            ],
        },
        "completionDeadlineSeconds": timeout_seconds,
    }
    if service_account:
        out["serviceAccount"] = service_account
    if check_hub_version is not None:
        out["postCommit"] = post_commit(check_hub_version)
    return out


def buildconfig_manifest(
    spec: BuildSpec,
    timeout_seconds: int = 3600,
    service_account: str | None = None,
    check_hub_version: str | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BuildConfig",
        "metadata": {
            "name": object_name(spec.job_id),
            "namespace": spec.namespace,
            "labels": build_labels(spec),
            "annotations": build_annotations(spec),
        },
        "spec": {
            **common_spec(spec, timeout_seconds, service_account, check_hub_version),
            "runPolicy": "Serial",
            "triggers": [],  # builds are started by the builder service only
            "successfulBuildsHistoryLimit": 1,
            "failedBuildsHistoryLimit": 1,
        },
    }


def build_manifest(
    spec: BuildSpec,
    timeout_seconds: int = 3600,
    service_account: str | None = None,
    owner: dict | None = None,
    check_hub_version: str | None = None,
) -> dict[str, Any]:
    name = object_name(spec.job_id)
    meta: dict[str, Any] = {
        "name": name,
        "namespace": spec.namespace,
        "labels": {
            **build_labels(spec),
            "openshift.io/build-config.name": name,
            "buildconfig": name,
            "openshift.io/build.start-policy": "Serial",
        },
        "annotations": {
            **build_annotations(spec),
            "openshift.io/build-config.name": name,
            "openshift.io/build.number": "1",
        },
    }
    if owner:
        meta["ownerReferences"] = [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "BuildConfig",
                "name": name,
                "uid": owner["metadata"]["uid"],
                "controller": True,
            }
        ]
    common = common_spec(spec, timeout_seconds, service_account, check_hub_version)
    common["revision"] = {"type": "Git", "git": {"commit": spec.commit}}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Build",
        "metadata": meta,
        "spec": {
            **common,
            "triggeredBy": [{"message": f"aicoe image builder: {spec.repo} at {spec.ref}"}],
        },
        "status": {"phase": "New", "config": {"kind": "BuildConfig", "name": name}},
    }


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("sha256:") and len(value) == DIGEST_LEN


def stream_digest(stream: dict | None, tag: str) -> tuple[str | None, str | None]:
    """(digest, dockerImageReference) of the newest status item of ``tag``, if any."""
    for entry in ((stream or {}).get("status") or {}).get("tags") or []:
        if isinstance(entry, dict) and entry.get("tag") == tag:
            items = entry.get("items") or []
            if items and isinstance(items[0], dict):
                ref = items[0].get("dockerImageReference") or ""
                digest = items[0].get("image")
                if not _is_digest(digest) and "@" in ref:
                    digest = ref.rpartition("@")[2]
                if _is_digest(digest):
                    return digest, ref or None
    return None, None


def build_state(build: dict | None, stream: dict | None, spec: BuildSpec) -> BackendState:
    """The build phase from an OpenShift Build and the target ImageStream (pure)."""
    if build is None:
        return BackendState(BuildPhase.PENDING, "build not created yet")
    status = build.get("status") or {}
    phase = status.get("phase") or "New"
    message = (status.get("message") or "").strip()
    reason = (status.get("reason") or "").strip()
    if status.get("cancelled") and phase not in TERMINAL_PHASES:
        return BackendState(BuildPhase.BUILDING, "cancelling")
    if phase in BUILDING_PHASES:
        return BackendState(BuildPhase.BUILDING, message or phase)
    if phase == "Complete":
        digest, ref = stream_digest(stream, spec.tag)
        if digest is None:
            to = (status.get("output") or {}).get("to") or {}
            if _is_digest(to.get("imageDigest")):
                digest = to["imageDigest"]
                pushed = status.get("outputDockerImageReference") or ""
                ref = f"{pushed.rsplit(':', 1)[0]}@{digest}" if pushed else None
        if digest is None:
            return BackendState(BuildPhase.BUILDING, "build complete; waiting for the image digest")
        return BackendState(BuildPhase.READY, "", digest, ref)
    if phase in FAILED_PHASES:
        head = message or reason or f"build {phase.lower()}"
        snippet = (status.get("logSnippet") or "").strip()
        return BackendState(BuildPhase.FAILED, f"{head}\n{snippet}" if snippet else head)
    if phase == "Cancelled":
        return BackendState(BuildPhase.CANCELLED, message or "cancelled")
    return BackendState(BuildPhase.BUILDING, f"unknown build phase {phase!r}")


class OpenShiftBackend(Backend):
    """A BuildConfig + Build per build; OpenShift's build and image controllers run it and
    write the ImageStream."""

    name = "openshift"
    writes_stream_status = False  # the build's output and the image controller write it
    imports_images = True  # OpenShift's image import controller imports external images

    def __init__(
        self,
        api: client.ApiClient,
        *,
        timeout_seconds: int = 3600,
        service_account: str | None = None,
        log_reader: LogReader | None = None,
        check_image: bool = True,
        hub_version: str = "",
    ) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.check_image = check_image
        self.hub_version = hub_version
        self.hub_version_lookup: Callable[[], Awaitable[str | None]] | None = None
        self.core = client.CoreV1Api(api)
        self.timeout_seconds = timeout_seconds
        self.service_account = service_account
        self.log_reader = log_reader or self._read_pod_log

    @classmethod
    def from_settings(cls, api, settings, log_reader=None) -> OpenShiftBackend:
        return cls(
            api,
            timeout_seconds=settings.timeout,
            log_reader=log_reader,
            check_image=settings.check_image,
            hub_version=settings.hub_version,
        )

    def validate(self, spec: BuildSpec) -> None:
        validate_spec(spec)

    async def _get(self, plural: str, spec: BuildSpec) -> dict | None:
        return await or_none(
            self.custom.get_namespaced_custom_object(
                GROUP, VERSION, spec.namespace, plural, object_name(spec.job_id)
            )
        )

    async def _create(self, plural: str, spec: BuildSpec, body: dict) -> dict | None:
        return await create_once(
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, spec.namespace, plural, body
            )
        )

    async def submit(self, spec: BuildSpec) -> None:
        if self.check_image and not self.hub_version and self.hub_version_lookup:
            self.hub_version = await self.hub_version_lookup() or ""
        check = self.hub_version if self.check_image else None
        bc = await self._create(
            "buildconfigs",
            spec,
            buildconfig_manifest(spec, self.timeout_seconds, self.service_account, check),
        )
        if bc is None:
            bc = await self._get("buildconfigs", spec)
        await self._create(
            "builds",
            spec,
            build_manifest(spec, self.timeout_seconds, self.service_account, bc, check),
        )

    async def _stream(self, spec: BuildSpec) -> dict | None:
        return await or_none(
            self.custom.get_namespaced_custom_object(
                IMAGE_GROUP, "v1", spec.namespace, "imagestreams", spec.stream
            )
        )

    async def _read_pod_log(
        self, namespace: str, pod: str, container: str | None = None
    ) -> str | None:
        try:
            return await self.core.read_namespaced_pod_log(
                pod, namespace, container=container, limit_bytes=1 << 20
            )
        except Exception:
            return None

    def watched(self, namespace: str) -> list[Watched]:
        return [
            Watched(
                "builds",
                self.custom.list_namespaced_custom_object,
                (GROUP, VERSION, namespace, "builds"),
                lambda b: job_id_of(b["metadata"]["name"]),
                {"label_selector": MANAGED_SELECTOR},
            )
        ]

    async def state(self, spec: BuildSpec, *, with_log: bool = True) -> BackendState:
        build = await self._get("builds", spec)
        phase = ((build or {}).get("status") or {}).get("phase")
        stream = await self._stream(spec) if phase == "Complete" else None
        state = build_state(build, stream, spec)
        if with_log and build is not None and phase not in (None, "New"):
            # OpenShift runs the build in the pod <build>-build (its only container)
            text = await self.log_reader(spec.namespace, f"{object_name(spec.job_id)}-build")
            if text is not None:
                state = BackendState(
                    state.phase, state.message, state.digest, state.image_ref, text
                )
        return state

    async def exists(self, spec: BuildSpec) -> bool:
        return await self._get("builds", spec) is not None

    async def cancel(self, spec: BuildSpec) -> None:
        """OpenShift's ``oc cancel-build``: set ``status.cancelled`` on the Build; the build
        controller stops the pod and moves the Build to ``Cancelled``."""
        name = object_name(spec.job_id)
        body = {"status": {"cancelled": True}}
        try:
            # where builds have a status subresource (the CRDs of the test suite)
            await self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, spec.namespace, "builds", name, body, _content_type=MERGE
            )
            return
        except ApiException as e:
            # OpenShift's built-in builds have no status subresource (404, or 403 where the
            # role grants builds but not builds/status)
            if e.status not in (403, 404, 405):
                raise
        # OpenShift's built-in API: status is part of the Build resource
        await ignore_not_found(
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, spec.namespace, "builds", name, body, _content_type=MERGE
            )
        )

    async def cleanup(self, spec: BuildSpec) -> None:
        await self.delete_object(spec.namespace, object_name(spec.job_id))

    async def finished_objects(self, namespace: str) -> list[tuple[str, str]]:
        """(name, finish time) of this builder's finished Builds in ``namespace``."""
        builds = await self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, "builds", label_selector=MANAGED_SELECTOR
        )
        out = []
        for b in builds.get("items") or []:
            status = b.get("status") or {}
            if status.get("phase") in TERMINAL_PHASES:
                stamp = status.get("completionTimestamp") or b["metadata"].get(
                    "creationTimestamp", ""
                )
                out.append((b["metadata"]["name"], stamp))
        return out

    async def delete_object(self, namespace: str, name: str) -> None:
        for plural in ("builds", "buildconfigs"):
            await ignore_not_found(
                self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural, name, propagation_policy="Background"
                )
            )
