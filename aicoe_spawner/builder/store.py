"""Builds as Kubernetes objects: one ConfigMap per build (``imgbuild-<id>``) holds the spec,
phase, timestamps, message and log, so the service keeps no state of its own and the log
outlives the build pod. ``record_manifest``/``parse_record`` are pure; :class:`BuildStore` is the
thin async shell. Creating the same build twice is a 409 from the API server: that is the
dedup between requests and between replicas."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, replace
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from .backends.kubernetes import MANAGED_BY, build_annotations, build_labels
from .kube import raw_json
from .requests import BuildSpec, user_label

L = "aicoe-spawner.io/"
PHASES = ("pending", "building", "ready", "failed", "cancelled")
ACTIVE = ("pending", "building")
LOG_LIMIT = 512 * 1024
SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY},{L}record=build"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_name(build_id: str) -> str:
    return f"imgbuild-{build_id}"


@dataclass(frozen=True)
class Build:
    spec: BuildSpec
    phase: str = "pending"
    message: str = ""
    created: str = ""
    started: str = ""
    finished: str = ""
    digest: str = ""
    log: str = ""
    resource_version: str = ""

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE

    def view(self) -> dict[str, Any]:
        """The API's JSON for this build (no log)."""
        s = self.spec
        return {
            "id": s.id,
            "repo": s.repo,
            "ref": s.ref,
            "ref_kind": s.ref_kind,
            "commit": s.commit,
            "image": s.image,
            "output_image": s.output_image,
            "strategy": s.strategy,
            "requester": s.requester,
            "phase": self.phase,
            "message": self.message,
            "digest": self.digest or None,
            "created": self.created,
            "started": self.started or None,
            "finished": self.finished or None,
            "notes": list(s.notes),
        }


def record_manifest(build: Build) -> dict[str, Any]:
    spec = build.spec
    labels = {**build_labels(spec), f"{L}record": "build", f"{L}phase": build.phase}
    annotations = {
        **build_annotations(spec),
        f"{L}phase": build.phase,
        f"{L}message": build.message[-4000:],
        f"{L}created": build.created,
        f"{L}started": build.started,
        f"{L}finished": build.finished,
        f"{L}digest": build.digest,
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": record_name(spec.id),
            "namespace": spec.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "data": {"spec.json": spec.to_json(), "log": build.log[-LOG_LIMIT:]},
    }


def parse_record(obj: dict[str, Any]) -> Build | None:
    meta = obj.get("metadata") or {}
    ann = meta.get("annotations") or {}
    data = obj.get("data") or {}
    try:
        spec = BuildSpec.from_json(data["spec.json"])
    except (KeyError, ValueError, TypeError):
        return None
    phase = ann.get(f"{L}phase", "pending")
    return Build(
        spec=spec,
        phase=phase if phase in PHASES else "pending",
        message=ann.get(f"{L}message", ""),
        created=ann.get(f"{L}created", ""),
        started=ann.get(f"{L}started", ""),
        finished=ann.get(f"{L}finished", ""),
        digest=ann.get(f"{L}digest", ""),
        log=data.get("log", ""),
        resource_version=meta.get("resourceVersion", ""),
    )


class BuildStore:
    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace

    async def create(self, build: Build) -> tuple[Build, bool]:
        """(build, created): the existing build instead when its record exists already."""
        try:
            obj = await raw_json(
                self.core.create_namespaced_config_map(
                    self.namespace, record_manifest(build), _preload_content=False
                )
            )
            return parse_record(obj) or build, True
        except ApiException as e:
            if e.status != 409:
                raise
        existing = await self.get(build.id)
        if existing is None:  # deleted in between: try once more
            return await self.create(build)
        return existing, False

    async def get(self, build_id: str) -> Build | None:
        try:
            obj = await raw_json(
                self.core.read_namespaced_config_map(
                    record_name(build_id), self.namespace, _preload_content=False
                )
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return parse_record(obj)

    async def list(self, *, active_only: bool = False, requester: str | None = None) -> list[Build]:
        selector = SELECTOR
        if active_only:
            selector += f",{L}phase in (pending,building)"
        if requester is not None:
            selector += f",{L}requester={user_label(requester)}"
        items = (
            await raw_json(
                self.core.list_namespaced_config_map(
                    self.namespace, label_selector=selector, _preload_content=False
                )
            )
        )["items"]
        builds = [b for b in map(parse_record, items) if b is not None]
        if requester is not None:
            builds = [b for b in builds if b.spec.requester == requester]
        return sorted(builds, key=lambda b: b.created, reverse=True)

    async def update(self, build: Build, **changes: Any) -> Build:
        """Write ``changes`` (phase, message, timestamps, digest, log) with a merge patch."""
        new = replace(build, **changes)
        manifest = record_manifest(new)
        patch: dict[str, Any] = {
            "metadata": {
                "labels": {f"{L}phase": new.phase},
                "annotations": manifest["metadata"]["annotations"],
            }
        }
        if "log" in changes:
            patch["data"] = {"log": manifest["data"]["log"]}
        obj = await raw_json(
            self.core.patch_namespaced_config_map(
                record_name(build.id),
                self.namespace,
                patch,
                _content_type="application/merge-patch+json",
                _preload_content=False,
            )
        )
        return parse_record(obj) or new

    async def delete(self, build_id: str) -> None:
        try:
            await self.core.delete_namespaced_config_map(record_name(build_id), self.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
