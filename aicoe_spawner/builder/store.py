"""Builds as Kubernetes objects, written like a controller writes its objects.

- one ``ImageBuild`` (``aicoe-spawner.io/v1``, namespaced, status subresource) per build,
  ``imgbuild-<id>``: ``spec`` is the resolved :class:`BuildSpec`, ``status`` the phase,
  timestamps, digest and a bounded log tail. Status writes carry the resourceVersion they were
  decided on (a 409 is :class:`Conflict`: re-read and decide again) and the CRD refuses any
  change of a terminal phase. Records of running builds carry the label ``active=true``, so a
  reconcile lists O(active builds), never the whole history.
- the full log of a finished build, once, bounded, in the ConfigMap ``imgbuild-<id>-log``
  (owned by the record, so it goes with it);
- webhook deliveries as create-once ConfigMaps (``imgbuild-delivery-<hash>``): creating one
  is the atomic "first time this delivery is seen" across replicas and restarts.

``record_manifest``/``parse_record`` are pure; :class:`BuildStore` is the thin async shell.
Creating the same build twice is a 409 from the API server: that is the dedup between
requests and between replicas."""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from .kube import create_once, ignore_not_found, is_conflict, or_none, raw_json
from .naming import user_label
from .requests import BuildSpec
from .vocabulary import (
    ACTIVE,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MANAGED_SELECTOR,
    PHASES,
    TERMINAL,
    L,
    build_labels,
    log_name,
    now,
    object_name,
    utcnow,
)

__all__ = ["ACTIVE", "PHASES", "TERMINAL", "Build", "BuildStore", "Conflict", "now", "tail"]

GROUP, VERSION, PLURAL, KIND = "aicoe-spawner.io", "v1", "imagebuilds", "ImageBuild"
LOG_LIMIT = 512 * 1024  # the kept log of a finished build (its last bytes)
TAIL_LIMIT = 4 * 1024  # status.logTail
MESSAGE_LIMIT = 4000
ACTIVE_LABEL = f"{L}active"
JOB_LABEL = f"{L}job-id"  # the Job the build follows (its own, or another requester's)
IMAGE_LABEL = f"{L}image-hash"  # the build's ImageStream tag, for finding its records
FINISHED_ANNOTATION = f"{L}finished"  # on finished records, so retention reads metadata only
METADATA_LIST = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"
SELECTOR = MANAGED_SELECTOR
DELIVERY_SELECTOR = f"{SELECTOR},{L}record=delivery"
PAGE = 500

# status field name <-> Build attribute
_STATUS_FIELDS = {
    "phase": "phase",
    "message": "message",
    "started": "started",
    "finished": "finished",
    "digest": "digest",
    "submitted": "submitted",
    "submitAttempts": "submit_attempts",
    "logTail": "log_tail",
    "logConfigMap": "log_config_map",
}


class Conflict(Exception):
    """The record changed since it was read (HTTP 409): re-read and decide again."""


def record_name(build_id: str) -> str:
    return object_name(build_id)


def image_hash(stream: str, tag: str) -> str:
    return hashlib.sha256(f"{stream}:{tag}".encode()).hexdigest()[:16]


def tail(text: str, limit: int) -> str:
    """The last ``limit`` bytes of ``text``, starting at a line when there is one."""
    data = text.encode()
    if len(data) <= limit:
        return text
    cut = data[-limit:].decode(errors="ignore")
    _, nl, rest = cut.partition("\n")
    return rest if nl and rest else cut


@dataclass(frozen=True)
class Build:
    spec: BuildSpec
    phase: str = "pending"
    message: str = ""
    created: str = ""
    started: str = ""
    finished: str = ""
    digest: str = ""
    submitted: bool = False  # the Job/Build was created: a missing one is a failure
    submit_attempts: int = 0  # refused submissions so far
    log_tail: str = ""
    log_config_map: str = ""
    labelled_active: bool = True
    resource_version: str = ""
    uid: str = ""
    log: str = ""  # filled by BuildService.get (memory, the pod or the kept log); not stored

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
            "decided_by": list(s.decided_by),
            "requester": s.requester,
            "phase": self.phase,
            "message": self.message,
            "digest": self.digest or None,
            "created": self.created,
            "started": self.started or None,
            "finished": self.finished or None,
            "notes": list(s.notes),
        }


def status_of(build: Build) -> dict[str, Any]:
    return {key: getattr(build, attr) for key, attr in _STATUS_FIELDS.items()}


def record_manifest(build: Build) -> dict[str, Any]:
    spec = build.spec
    labels = {
        **build_labels(spec),  # build-id there is the Job's (spec.job_id); the record's own:
        f"{L}build-id": spec.id,
        JOB_LABEL: spec.job_id,
        ACTIVE_LABEL: "true" if build.active else "false",
        IMAGE_LABEL: image_hash(spec.stream, spec.tag),
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": record_name(spec.id),
            "namespace": spec.namespace,
            "labels": labels,
            "annotations": {f"{L}created": build.created},
        },
        "spec": {**asdict(spec), "notes": list(spec.notes), "image": spec.image},
    }


def parse_record(obj: dict[str, Any]) -> Build | None:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    try:
        spec = BuildSpec.from_json(json.dumps(obj["spec"]))
    except (KeyError, ValueError, TypeError):
        return None
    phase = status.get("phase") or "pending"
    return Build(
        spec=spec,
        phase=phase if phase in PHASES else "pending",
        message=status.get("message") or "",
        created=(meta.get("annotations") or {}).get(f"{L}created")
        or meta.get("creationTimestamp", ""),
        started=status.get("started") or "",
        finished=status.get("finished") or "",
        digest=status.get("digest") or "",
        submitted=bool(status.get("submitted")),
        submit_attempts=int(status.get("submitAttempts") or 0),
        log_tail=status.get("logTail") or "",
        log_config_map=status.get("logConfigMap") or "",
        labelled_active=(meta.get("labels") or {}).get(ACTIVE_LABEL) == "true",
        resource_version=meta.get("resourceVersion", ""),
        uid=meta.get("uid", ""),
    )


def delivery_name(delivery: str) -> str:
    return "imgbuild-delivery-" + hashlib.sha256(delivery.encode()).hexdigest()[:32]


class BuildStore:
    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.api_calls = 0  # requests made (benchmarks count them)

    # -- records ---------------------------------------------------------------------------

    async def create(self, build: Build) -> tuple[Build, bool]:
        """(build, created): the existing build instead when its record exists already."""
        self.api_calls += 1
        obj = await create_once(
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, record_manifest(build)
            )
        )
        if obj is not None:
            return parse_record(obj) or build, True
        existing = await self.get(build.id)
        if existing is None:  # deleted in between: try once more
            return await self.create(build)
        return existing, False

    async def get(self, build_id: str) -> Build | None:
        self.api_calls += 1
        obj = await or_none(
            self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, record_name(build_id)
            )
        )
        return None if obj is None else parse_record(obj)

    async def list(self, *, active_only: bool = False, requester: str | None = None) -> list[Build]:
        """Records, newest first: those labelled active (O(active builds)), a requester's, or
        all (in pages)."""
        selector = SELECTOR + f",{L}build-id"
        if active_only:
            selector += f",{ACTIVE_LABEL}=true"
        if requester is not None:
            selector += f",{L}requester={user_label(requester)}"
        builds: list[Build] = []
        token = None
        while True:
            self.api_calls += 1
            page = await self.custom.list_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                label_selector=selector,
                limit=PAGE,
                **({"_continue": token} if token else {}),
            )
            builds.extend(b for b in map(parse_record, page.get("items", [])) if b is not None)
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                break
        if requester is not None:
            builds = [b for b in builds if b.spec.requester == requester]
        return sorted(builds, key=lambda b: b.created, reverse=True)

    async def finished_ids(self) -> list[tuple[str, str]]:
        """(build id, finish time) of every finished record, from a metadata-only list (no
        spec, no status): what the retention needs, at a fraction of the bytes."""
        selector = f"{SELECTOR},{L}build-id,{ACTIVE_LABEL}=false"
        out: list[tuple[str, str]] = []
        token = None
        api = self.custom.api_client
        while True:
            query = [("labelSelector", selector), ("limit", str(PAGE))]
            if token:
                query.append(("continue", token))
            self.api_calls += 1
            page = await raw_json(
                api.call_api(
                    f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}",
                    "GET",
                    query_params=query,
                    header_params={"Accept": METADATA_LIST},
                    auth_settings=["BearerToken"],
                    _preload_content=False,
                )
            )
            for item in page.get("items") or []:  # null when there are none
                meta = item.get("metadata") or {}
                build_id = (meta.get("labels") or {}).get(f"{L}build-id", "")
                finished = (meta.get("annotations") or {}).get(FINISHED_ANNOTATION, "")
                if build_id:
                    out.append((build_id, finished))
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return out

    async def of_image(self, stream: str, tag: str) -> list[Build]:
        """The records of builds of one ImageStream tag."""
        self.api_calls += 1
        page = await self.custom.list_namespaced_custom_object(
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            label_selector=f"{SELECTOR},{IMAGE_LABEL}={image_hash(stream, tag)}",
        )
        builds = [b for b in map(parse_record, page.get("items", [])) if b is not None]
        return [b for b in builds if (b.spec.stream, b.spec.tag) == (stream, tag)]

    async def write_status(self, build: Build, **changes: Any) -> Build:
        """Write ``changes`` to the record's status, on the condition that it is still the
        version ``build`` was read at (else :class:`Conflict`)."""
        new = replace(build, **changes)
        status = {
            key: getattr(new, attr)
            for key, attr in _STATUS_FIELDS.items()
            if attr in changes or key == "phase"
        }
        if "message" in status:
            status["message"] = status["message"][-MESSAGE_LIMIT:]
        if "logTail" in status:
            status["logTail"] = tail(status["logTail"], TAIL_LIMIT)
        body = {"metadata": {"resourceVersion": build.resource_version}, "status": status}
        self.api_calls += 1
        try:
            obj = await self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                record_name(build.id),
                body,
                _content_type="application/merge-patch+json",
            )
        except ApiException as e:
            if is_conflict(e):
                raise Conflict(build.id) from None
            raise
        return parse_record(obj) or new

    async def mark_inactive(self, build: Build) -> None:
        """Drop a finished record from the active selector (only ever done after its status
        is terminal, which never changes again, so no precondition is needed)."""
        self.api_calls += 1
        meta = {
            "labels": {ACTIVE_LABEL: "false"},
            "annotations": {FINISHED_ANNOTATION: build.finished or now()},
        }
        await ignore_not_found(
            self.custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                record_name(build.id),
                {"metadata": meta},
                _content_type="application/merge-patch+json",
            )
        )

    async def delete(self, build_id: str) -> None:
        for name, call in (
            (record_name(build_id), self._delete_record),
            (log_name(build_id), self._delete_config_map),
        ):
            self.api_calls += 1
            await ignore_not_found(call(name))

    async def _delete_record(self, name: str) -> None:
        await self.custom.delete_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )

    async def _delete_config_map(self, name: str) -> None:
        await self.core.delete_namespaced_config_map(name, self.namespace)

    # -- kept logs -------------------------------------------------------------------------

    async def save_log(self, build: Build, text: str) -> str:
        """Keep a finished build's log (its last LOG_LIMIT bytes) once; returns the ConfigMap
        name. A second save (another replica) finds it there and leaves it."""
        name = log_name(build.id)
        body = {
            "metadata": {
                "name": name,
                "labels": {
                    MANAGED_BY_LABEL: MANAGED_BY,
                    f"{L}record": "log",
                    f"{L}build-id": build.id,
                },
                "ownerReferences": [
                    {
                        "apiVersion": f"{GROUP}/{VERSION}",
                        "kind": KIND,
                        "name": record_name(build.id),
                        "uid": build.uid,
                    }
                ]
                if build.uid
                else [],
            },
            "data": {"log": tail(text, LOG_LIMIT)},
        }
        self.api_calls += 1
        await create_once(self.core.create_namespaced_config_map(self.namespace, body))
        return name

    async def read_log(self, build: Build) -> str | None:
        if not build.log_config_map:
            return None
        self.api_calls += 1
        cm = await or_none(
            self.core.read_namespaced_config_map(build.log_config_map, self.namespace)
        )
        return None if cm is None else (cm.data or {}).get("log", "")

    # -- webhook deliveries ----------------------------------------------------------------

    async def claim_delivery(self, delivery: str) -> tuple[bool, str]:
        """(first time, build id so far): record the delivery unless it was seen before."""
        name = delivery_name(delivery)
        body = {
            "metadata": {
                "name": name,
                "labels": {MANAGED_BY_LABEL: MANAGED_BY, f"{L}record": "delivery"},
                "annotations": {f"{L}delivery": delivery[:200]},
            },
            "data": {"build": ""},
        }
        self.api_calls += 1
        if await create_once(self.core.create_namespaced_config_map(self.namespace, body)):
            return True, ""
        cm = await or_none(self.core.read_namespaced_config_map(name, self.namespace))
        if cm is None:  # released in between (the first attempt failed): retry
            return await self.claim_delivery(delivery)
        return False, (cm.data or {}).get("build", "")

    async def bind_delivery(self, delivery: str, build_id: str) -> None:
        self.api_calls += 1
        await self.core.patch_namespaced_config_map(
            delivery_name(delivery), self.namespace, {"data": {"build": build_id}}
        )

    async def release_delivery(self, delivery: str) -> None:
        """Forget a delivery whose handling failed, so that GitHub's redelivery is handled."""
        self.api_calls += 1
        await ignore_not_found(
            self.core.delete_namespaced_config_map(delivery_name(delivery), self.namespace)
        )

    async def expire_deliveries(self, older_than_seconds: float) -> list[str]:
        self.api_calls += 1
        cms = await self.core.list_namespaced_config_map(
            self.namespace, label_selector=DELIVERY_SELECTOR
        )
        cutoff = utcnow() - datetime.timedelta(seconds=older_than_seconds)
        gone = []
        for cm in cms.items:
            if cm.metadata.creation_timestamp and cm.metadata.creation_timestamp < cutoff:
                await self.release_delivery_name(cm.metadata.name)
                gone.append(cm.metadata.name)
        return gone

    async def release_delivery_name(self, name: str) -> None:
        self.api_calls += 1
        await ignore_not_found(self.core.delete_namespaced_config_map(name, self.namespace))
