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


EXPIRES_ANNOTATION = "aicoe-spawner.io/expires-at"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"


def _stamp(t: datetime.datetime) -> str:
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_stamp(value: Any) -> datetime.datetime | None:
    try:
        return datetime.datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.UTC
        )
    except ValueError:
        return None


def with_tag(
    stream: dict,
    spec: BuildSpec,
    phase: str,
    message: str = "",
    *,
    image_from: bool = True,
    expires_at: datetime.datetime | None = None,
) -> dict:
    """``stream`` with spec tag ``spec.tag`` describing the build in ``phase``
    (building|failed|ready|cancelled). ``image_from``: the tag points at the pushed image
    (plain Kubernetes); on OpenShift the build's output writes the tag, so it has no ``from``.
    ``expires_at``: images built from branches expire (tag annotation, see :func:`expired`)."""
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
    if expires_at is not None:
        ann[EXPIRES_ANNOTATION] = _stamp(expires_at)
    else:
        ann.pop(EXPIRES_ANNOTATION, None)
    tag["annotations"] = ann
    if image_from:
        tag["from"] = {"kind": "DockerImage", "name": spec.output_image}
    tag.setdefault("referencePolicy", {"type": "Local"})
    return out


def expired(stream: dict, now: datetime.datetime) -> list[tuple[str, str]]:
    """(tag, build id) of the spec tags of ``stream`` whose expiry annotation is past."""
    out = []
    for tag in ((stream or {}).get("spec") or {}).get("tags") or []:
        ann = (tag or {}).get("annotations") or {}
        when = _parse_stamp(ann.get(EXPIRES_ANNOTATION)) if EXPIRES_ANNOTATION in ann else None
        if when is not None and when <= now and tag.get("name"):
            out.append((tag["name"], ann.get("aicoe-spawner.io/build-id", "")))
    return out


def without_tags(stream: dict, names: set[str]) -> dict:
    """``stream`` without the spec and status tags ``names``."""
    out = copy.deepcopy(stream)
    spec = out.get("spec") or {}
    spec["tags"] = [t for t in spec.get("tags") or [] if (t or {}).get("name") not in names]
    status = out.get("status")
    if isinstance(status, dict) and status.get("tags") is not None:
        status["tags"] = [t for t in status["tags"] if (t or {}).get("tag") not in names]
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

    def __init__(
        self,
        api: client.ApiClient,
        *,
        write_status: bool = True,
        branch_ttl_seconds: int = 0,
    ) -> None:
        self.custom = client.CustomObjectsApi(api)
        # False on OpenShift: the build's output and the image controller write the tag
        self.write_status = write_status
        self.branch_ttl_seconds = branch_ttl_seconds  # 0: branch images never expire

    def _expiry(self, spec: BuildSpec) -> datetime.datetime | None:
        """Tags built from a branch expire ``branch_ttl_seconds`` after their last write
        (a rebuild of the branch renews them); tags and commits never do."""
        if self.branch_ttl_seconds <= 0 or spec.ref_kind != "branch":
            return None
        now = datetime.datetime.now(datetime.UTC)
        return now + datetime.timedelta(seconds=self.branch_ttl_seconds)

    def _with_tag(self, stream: dict, spec: BuildSpec, phase: str, message: str) -> dict:
        return with_tag(
            stream,
            spec,
            phase,
            message,
            image_from=self.write_status,
            expires_at=self._expiry(spec),
        )

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
                    body = self._with_tag(new_stream(spec), spec, phase, message)
                    return await self.custom.create_namespaced_custom_object(
                        GROUP, VERSION, spec.namespace, PLURAL, body
                    )
                body = self._with_tag(current, spec, phase, message)
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

    async def expire(self, namespace: str, now: datetime.datetime | None = None) -> list[dict]:
        """Remove the expired spec and status tags of this builder's ImageStreams in
        ``namespace`` (and a stream left without tags). Returns what was removed:
        ``{"stream", "tag", "build_id"}`` per tag (``tag`` None: the stream was deleted)."""
        now = now or datetime.datetime.now(datetime.UTC)
        streams = await self.custom.list_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            label_selector=f"{MANAGED_BY_LABEL}=aicoe-image-builder",
        )
        removed: list[dict] = []
        for stream in streams.get("items") or []:
            name = stream["metadata"]["name"]
            for attempt in range(20):
                gone = expired(stream, now)
                if not gone:
                    break
                try:
                    removed.extend(await self._remove(namespace, stream, gone))
                    break
                except ApiException as e:
                    if e.status == 404:
                        break
                    if e.status != 409 or attempt == 19:
                        raise
                    await asyncio.sleep(0.02 * (attempt + 1))
                    try:
                        stream = await self.custom.get_namespaced_custom_object(
                            GROUP, VERSION, namespace, PLURAL, name
                        )
                    except ApiException as e2:
                        if e2.status == 404:
                            break
                        raise
        return removed

    async def _remove(self, namespace: str, stream: dict, gone: list[tuple[str, str]]) -> list:
        name = stream["metadata"]["name"]
        names = {tag for tag, _ in gone}
        body = without_tags(stream, names)
        removed = [{"stream": name, "tag": tag, "build_id": bid} for tag, bid in gone]
        if not body["spec"]["tags"]:
            await self.custom.delete_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                body={"preconditions": {"resourceVersion": stream["metadata"]["resourceVersion"]}},
            )
            return [*removed, {"stream": name, "tag": None, "build_id": ""}]
        updated = await self.custom.replace_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, body
        )
        status_tags = ((updated.get("status") or {}).get("tags")) or []
        if any((t or {}).get("tag") in names for t in status_tags):
            # the status subresource (plain Kubernetes; OpenShift's image controller prunes
            # status tags of removed spec tags itself)
            for attempt in range(20):
                try:
                    await self.custom.replace_namespaced_custom_object_status(
                        GROUP, VERSION, namespace, PLURAL, name, without_tags(updated, names)
                    )
                    break
                except ApiException as e:
                    if e.status in (404, 405):
                        break
                    if e.status != 409 or attempt == 19:
                        raise
                    await asyncio.sleep(0.02 * (attempt + 1))
                    updated = await self.custom.get_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL, name
                    )
        return removed
