"""Writes the ImageStream for a build: the stream (notebook label, ODH annotations), its tag
(build commit, build phase/message) and, when the build pushed an image, the status tag
pinned to the digest (status subresource). Pure ``with_*`` functions + a thin async shell that
retries on conflicts (several replicas may write the same stream)."""

from __future__ import annotations

import asyncio
import copy
import datetime
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from ..catalog import BUILD_MESSAGE_ANNOTATION, BUILD_PHASE_ANNOTATION, NOTEBOOK_IMAGE_LABEL
from .requests import BuildSpec

GROUP, VERSION, PLURAL = "image.openshift.io", "v1", "imagestreams"
A = "opendatahub.io/"
MESSAGE_LIMIT = 2000


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_stream(spec: BuildSpec) -> dict[str, Any]:
    annotations = {
        f"{A}notebook-image-name": spec.display_name or spec.stream,
        f"{A}notebook-image-desc": spec.description or f"Built from {spec.repo}",
        f"{A}notebook-image-url": spec.repo,
        f"{A}notebook-image-creator": spec.requester,
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ImageStream",
        "metadata": {
            "name": spec.stream,
            "namespace": spec.namespace,
            "labels": {
                NOTEBOOK_IMAGE_LABEL: "true",
                "app.kubernetes.io/managed-by": "aicoe-image-builder",
            },
            "annotations": annotations,
        },
        "spec": {"lookupPolicy": {"local": True}, "tags": []},
    }


def with_tag(stream: dict, spec: BuildSpec, phase: str, message: str = "") -> dict:
    """``stream`` with spec tag ``spec.tag`` describing the build in ``phase``
    (building|failed|ready|cancelled)."""
    out = copy.deepcopy(stream)
    tags = out.setdefault("spec", {}).setdefault("tags", []) or []
    out["spec"]["tags"] = tags
    tag = next((t for t in tags if t.get("name") == spec.tag), None)
    if tag is None:
        tag = {"name": spec.tag}
        tags.append(tag)
    ann = dict(tag.get("annotations") or {})
    ann[f"{A}notebook-build-commit"] = spec.commit
    ann["aicoe-spawner.io/build-id"] = spec.id
    if phase in ("building", "failed"):
        ann[BUILD_PHASE_ANNOTATION] = phase
    else:
        ann.pop(BUILD_PHASE_ANNOTATION, None)
    if phase == "failed":
        ann[BUILD_MESSAGE_ANNOTATION] = (message or "build failed")[-MESSAGE_LIMIT:]
    else:
        ann.pop(BUILD_MESSAGE_ANNOTATION, None)
    tag["annotations"] = ann
    tag["from"] = {"kind": "DockerImage", "name": spec.output_image}
    tag.setdefault("referencePolicy", {"type": "Local"})
    return out


def with_status_tag(stream: dict, spec: BuildSpec, digest: str) -> dict:
    """``stream`` with status tag ``spec.tag`` whose newest item is the pushed digest."""
    out = copy.deepcopy(stream)
    status = out.setdefault("status", {}) or {}
    out["status"] = status
    repo = spec.output_image.rsplit(":", 1)[0]
    status.setdefault("dockerImageRepository", repo)
    tags = status.setdefault("tags", []) or []
    status["tags"] = tags
    entry = next((t for t in tags if t.get("tag") == spec.tag), None)
    if entry is None:
        entry = {"tag": spec.tag, "items": []}
        tags.append(entry)
    item = {
        "created": _now(),
        "dockerImageReference": f"{repo}@{digest}",
        "image": digest,
        "generation": (out.get("metadata") or {}).get("generation", 1),
    }
    items = [i for i in entry.get("items") or [] if i.get("image") != digest]
    entry["items"] = [item, *items][:5]
    entry.pop("conditions", None)
    return out


class Registrar:
    """Applies :func:`with_tag` / :func:`with_status_tag` to the API server."""

    def __init__(self, api: client.ApiClient, *, write_status: bool = True) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.write_status = write_status  # False on OpenShift: the build controller does it

    async def _read(self, spec: BuildSpec) -> dict | None:
        try:
            return await self.custom.get_namespaced_custom_object(
                GROUP, VERSION, spec.namespace, PLURAL, spec.stream
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def mark(self, spec: BuildSpec, phase: str, message: str = "") -> dict:
        """Create or update the stream and its tag for ``phase``; retried on conflicts."""
        for attempt in range(20):
            current = await self._read(spec)
            try:
                if current is None:
                    body = with_tag(new_stream(spec), spec, phase, message)
                    return await self.custom.create_namespaced_custom_object(
                        GROUP, VERSION, spec.namespace, PLURAL, body
                    )
                body = with_tag(current, spec, phase, message)
                if body == current:
                    return current
                return await self.custom.replace_namespaced_custom_object(
                    GROUP, VERSION, spec.namespace, PLURAL, spec.stream, body
                )
            except ApiException as e:
                if e.status != 409 or attempt == 19:
                    raise
                await asyncio.sleep(0.02 * (attempt + 1))
        raise RuntimeError("unreachable")

    async def ready(self, spec: BuildSpec, digest: str) -> dict:
        stream = await self.mark(spec, "ready")
        if not self.write_status:
            return stream
        for attempt in range(20):
            current = await self._read(spec)
            assert current is not None
            body = with_status_tag(current, spec, digest)
            if body.get("status") == current.get("status"):
                return current
            try:
                return await self.custom.replace_namespaced_custom_object_status(
                    GROUP, VERSION, spec.namespace, PLURAL, spec.stream, body
                )
            except ApiException as e:
                if e.status != 409 or attempt == 19:
                    raise
                await asyncio.sleep(0.02 * (attempt + 1))
        raise RuntimeError("unreachable")
