"""Writes the ImageStream for a build: the stream (notebook label, ODH annotations), its tags
(build commit, build phase/message) and, when the build pushed an image, the status tags
pinned to the digest (status subresource). Pure ``with_*`` functions + a thin async shell that
retries on conflicts (several replicas may write the same stream).

The builder writes only streams it owns for the build's repository (:func:`ownership`); a
failed build publishes a generic reason (:func:`public_reason`), never its log, and never
takes a tag that already serves an image out of service."""

from __future__ import annotations

import copy
import datetime
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from ..catalog import BUILD_MESSAGE_ANNOTATION, BUILD_PHASE_ANNOTATION, NOTEBOOK_IMAGE_LABEL
from .image_check import Packages, packages_annotation
from .kube import ignore_not_found, is_conflict, is_not_found, or_none, retry_on_conflict
from .naming import user_label
from .publish import OPTIONS_ANNOTATION, PUBLISHER_ANNOTATION, options_text, publisher_of, refusal
from .requests import BuildRequestError, BuildSpec
from .vocabulary import MANAGED_BY, MANAGED_BY_LABEL, L, parse_stamp, stamp, utcnow
from .vocabulary import BuildPhase as P

GROUP, VERSION, PLURAL = "image.openshift.io", "v1", "imagestreams"
A = "opendatahub.io/"
MESSAGE_LIMIT = 2000
# ImageStream writes after a conflict: read again and decide again, up to 20 times
_RETRY = {"attempts": 20, "backoff": 0.02, "cap": 1.0, "jitter": False}
SOFTWARE_ANNOTATION = f"{A}notebook-software"
DEPENDENCIES_ANNOTATION = f"{A}notebook-python-dependencies"


SOURCE_REPO_ANNOTATION = f"{L}source-repo"
LAST_BUILD_ANNOTATION = f"{L}last-build"
MANAGER = MANAGED_BY
PUBLISHER_LABEL = f"{L}publisher-hash"  # user_label(publisher), to count them


ANOTHER_REPO = "belongs to another repository"


class OwnershipError(BuildRequestError):
    """The target stream exists and is not this builder's for the build's repository (409)."""

    def __init__(self, spec: BuildSpec, why: str) -> None:
        super().__init__(
            spec.name_field,
            f"ImageStream {spec.namespace}/{spec.stream} {why}; choose another name",
            409,
        )


class PublishError(OwnershipError):
    """The stream is the builder's for the repository, but its requester may not publish
    this content to it (:func:`.publish.refusal`; 409 naming the option)."""

    def __init__(self, error: BuildRequestError) -> None:
        BuildRequestError.__init__(self, error.field, error.why, 409)


def ownership(stream: dict | None, repo: str) -> str | None:
    """None when the builder may write ``stream`` for ``repo`` (absent, or labelled as the
    builder's and annotated with ``repo``), else why not (pure)."""
    if stream is None:
        return None
    meta = stream.get("metadata") or {}
    labels = meta.get("labels") or {}
    ann = meta.get("annotations") or {}
    if labels.get(MANAGED_BY_LABEL) != MANAGER:
        return "exists and is not managed by the image builder"
    # streams written before the source-repo annotation: the repo link stood for it
    source = ann.get(SOURCE_REPO_ANNOTATION, ann.get(f"{A}notebook-image-url"))
    if source != repo:
        return ANOTHER_REPO
    return None


def public_reason(message: str) -> str:
    """What the catalog shows for a failed build: a generic reason, never its log."""
    head = "build timed out" if message.startswith("build timed out") else "build failed"
    return f"{head}; its requester can read the log in the image builder"


def new_stream(spec: BuildSpec) -> dict[str, Any]:
    annotations = {
        f"{A}notebook-image-name": spec.display_name or spec.stream,
        f"{A}notebook-image-desc": spec.description or f"Built from {spec.repo}",
        f"{A}notebook-image-url": spec.repo,
        f"{A}notebook-image-creator": spec.requester,
        SOURCE_REPO_ANNOTATION: spec.repo,
        PUBLISHER_ANNOTATION: spec.requester,
    }
    # not in the catalog (no notebook-image label) until a tag is ready (:func:`with_tag`)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ImageStream",
        "metadata": {
            "name": spec.stream,
            "namespace": spec.namespace,
            "labels": {
                MANAGED_BY_LABEL: MANAGER,
                PUBLISHER_LABEL: user_label(spec.requester),
            },
            "annotations": annotations,
        },
        "spec": {"lookupPolicy": {"local": True}, "tags": []},
    }


EXPIRES_ANNOTATION = "aicoe-spawner.io/expires-at"


def serves_image(stream: dict, tag: str) -> bool:
    """True when status tag ``tag`` of ``stream`` has a digest-pinned image."""
    for entry in ((stream or {}).get("status") or {}).get("tags") or []:
        if isinstance(entry, dict) and entry.get("tag") == tag:
            items = entry.get("items") or []
            ref = (items[0] or {}).get("dockerImageReference") if items else None
            return isinstance(ref, str) and "@sha256:" in ref
    return False


def tag_names(spec: BuildSpec) -> tuple[str, ...]:
    """The tags a build registers: its own and the ``custom-tag`` (same digest)."""
    return (spec.tag, *spec.extra_tags)


def _image_of(spec: BuildSpec, tag: str) -> str:
    return f"{spec.output_image.rsplit(':', 1)[0]}:{tag}"


def with_tag(
    stream: dict,
    spec: BuildSpec,
    phase: str,
    message: str = "",
    *,
    image_from: bool = True,
    expires_at: datetime.datetime | None = None,
    digest: str | None = None,
    software: Packages | None = None,
    dependencies: Packages | None = None,
) -> dict:
    """``stream`` with the spec tags of ``spec`` describing the build in ``phase``
    (pending|building|failed|ready|cancelled). ``image_from``: the tag points at the pushed image
    (plain Kubernetes); on OpenShift the build's output writes the tag, so it has no ``from``
    (an extra tag then follows the built image, ``digest``). ``expires_at``: images built from
    branches expire (tag annotation, see :func:`expired`). A tag that serves an image keeps
    serving it (and its commit) while a rebuild runs or after one failed. ``software`` and
    ``dependencies`` (the image check's report, phase ready) become the tag's
    ``notebook-software`` / ``notebook-python-dependencies`` annotations; None keeps them."""
    out = copy.deepcopy(stream)
    if phase == P.READY:  # the stream enters the catalog with its first ready tag
        labels = out.setdefault("metadata", {}).setdefault("labels", {}) or {}
        out["metadata"]["labels"] = {**labels, NOTEBOOK_IMAGE_LABEL: "true"}
    tags = out.setdefault("spec", {}).setdefault("tags", []) or []
    out["spec"]["tags"] = tags
    for name in tag_names(spec):
        tag = next((t for t in tags if t.get("name") == name), None)
        if tag is None:
            tag = {"name": name}
            tags.append(tag)
        ann = dict(tag.get("annotations") or {})
        if phase in (P.PENDING, P.BUILDING, P.FAILED, P.CANCELLED) and serves_image(out, name):
            ann[LAST_BUILD_ANNOTATION] = f"{phase} {spec.id}"
            tag["annotations"] = ann
            continue
        ann.pop(LAST_BUILD_ANNOTATION, None)
        ann[f"{A}notebook-build-commit"] = spec.commit
        ann["aicoe-spawner.io/build-id"] = spec.id
        ann[OPTIONS_ANNOTATION] = options_text(spec)
        if phase in (P.PENDING, P.BUILDING, P.FAILED):
            ann[BUILD_PHASE_ANNOTATION] = phase
        else:
            ann.pop(BUILD_PHASE_ANNOTATION, None)
        if phase == P.FAILED:
            ann[BUILD_MESSAGE_ANNOTATION] = public_reason(message)
        else:
            ann.pop(BUILD_MESSAGE_ANNOTATION, None)
        if phase == P.READY:
            for key, items in (
                (SOFTWARE_ANNOTATION, software),
                (DEPENDENCIES_ANNOTATION, dependencies),
            ):
                if items is not None:
                    ann[key] = packages_annotation(items)
        if expires_at is not None:
            ann[EXPIRES_ANNOTATION] = stamp(expires_at)
        else:
            ann.pop(EXPIRES_ANNOTATION, None)
        tag["annotations"] = ann
        if image_from:
            tag["from"] = {"kind": "DockerImage", "name": _image_of(spec, name)}
        elif name != spec.tag and digest:
            tag["from"] = {"kind": "ImageStreamImage", "name": f"{spec.stream}@{digest}"}
        tag.setdefault("referencePolicy", {"type": "Local"})
    return out


def expired(stream: dict, now: datetime.datetime) -> list[tuple[str, str]]:
    """(tag, build id) of the spec tags of ``stream`` whose expiry annotation is past."""
    out = []
    for tag in ((stream or {}).get("spec") or {}).get("tags") or []:
        ann = (tag or {}).get("annotations") or {}
        when = parse_stamp(ann.get(EXPIRES_ANNOTATION)) if EXPIRES_ANNOTATION in ann else None
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


def after_end(stream: dict, spec: BuildSpec, phase: str, message: str = "") -> dict | None:
    """``stream`` after the build of ``spec`` failed or was cancelled: a tag that serves an
    image keeps serving it (:func:`with_tag`); a tag that never did (a first build) is removed,
    and so is the stream when no tag is left (None)."""
    out = with_tag(stream, spec, phase, message, image_from=False)
    unserved = {t for t in tag_names(spec) if not serves_image(stream, t)}
    out = without_tags(out, unserved)
    status_tags = (out.get("status") or {}).get("tags") or []
    if not out["spec"]["tags"] and not status_tags:
        return None
    return out


def abandoned(
    stream: dict, active: set[tuple[str, str]], now: datetime.datetime, grace_seconds: float
) -> bool:
    """True for a stream of this builder that never served an image (not in the catalog),
    none of whose tags an active build writes (``active``: (stream, tag)), created more than
    ``grace_seconds`` ago: what a first build left when it ended in a race with a write."""
    meta = stream.get("metadata") or {}
    if (meta.get("labels") or {}).get(NOTEBOOK_IMAGE_LABEL) == "true":
        return False
    name = meta.get("name", "")
    tags = [t.get("name") for t in (stream.get("spec") or {}).get("tags") or [] if t]
    if any(serves_image(stream, t) for t in tags) or any((name, t) in active for t in tags):
        return False
    created = parse_stamp(meta.get("creationTimestamp"))
    return created is not None and (now - created).total_seconds() > grace_seconds


def with_status_tag(stream: dict, spec: BuildSpec, digest: str) -> dict:
    """``stream`` with the status tags of ``spec`` whose newest item is the pushed digest."""
    out = copy.deepcopy(stream)
    status = out.setdefault("status", {}) or {}
    out["status"] = status
    repo = spec.output_image.rsplit(":", 1)[0]
    status.setdefault("dockerImageRepository", repo)
    tags = status.setdefault("tags", []) or []
    status["tags"] = tags
    for name in tag_names(spec):
        entry = next((t for t in tags if t.get("tag") == name), None)
        if entry is None:
            entry = {"tag": name, "items": []}
            tags.append(entry)
        item = {
            "created": stamp(),
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
        now = utcnow()
        return now + datetime.timedelta(seconds=self.branch_ttl_seconds)

    def _with_tag(
        self,
        stream: dict,
        spec: BuildSpec,
        phase: str,
        message: str,
        digest: str | None = None,
        report: tuple[Packages | None, Packages | None] = (None, None),
    ) -> dict:
        return with_tag(
            stream,
            spec,
            phase,
            message,
            image_from=self.write_status,
            expires_at=self._expiry(spec),
            digest=digest,
            software=report[0],
            dependencies=report[1],
        )

    async def check(self, spec: BuildSpec) -> str | None:
        """Why the builder may not write the target stream of ``spec`` (None: it may)."""
        return ownership(await self._read(spec), spec.repo)

    async def read(self, spec: BuildSpec) -> dict | None:
        """The target stream of ``spec`` (None: absent)."""
        return await self._read(spec)

    async def published(self, namespace: str, requester: str) -> int:
        """How many of this builder's streams in ``namespace`` ``requester`` published."""
        streams = await self.custom.list_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            label_selector=f"{MANAGED_BY_LABEL}={MANAGER},"
            f"{PUBLISHER_LABEL}={user_label(requester)}",
        )
        return sum(1 for s in streams.get("items") or [] if publisher_of(s) == requester)

    async def _read(self, spec: BuildSpec) -> dict | None:
        return await or_none(self._get(spec.namespace, spec.stream))

    async def mark(
        self,
        spec: BuildSpec,
        phase: str,
        message: str = "",
        digest: str | None = None,
        report: tuple[Packages | None, Packages | None] = (None, None),
    ) -> dict:
        """Create or update the stream and its tags for ``phase``; retried on conflicts.
        Raises :class:`OwnershipError` for a stream that is not the builder's for the repo,
        :class:`PublishError` for content its requester may not publish there (both checked
        on the version replaced, so a concurrent writer cannot slip in). A failed or
        cancelled first build leaves nothing (:func:`after_end`)."""

        async def attempt() -> tuple[bool, dict]:
            current = await self._read(spec)
            why = ownership(current, spec.repo)
            if why is not None:
                raise OwnershipError(spec, why)
            refused = refusal(current, spec)
            if refused is not None:
                raise PublishError(refused)
            if phase in (P.FAILED, P.CANCELLED):
                return True, await self._end(current, spec, phase, message)
            if current is None:
                body = self._with_tag(new_stream(spec), spec, phase, message, digest, report)
                return True, await self.custom.create_namespaced_custom_object(
                    GROUP, VERSION, spec.namespace, PLURAL, body
                )
            body = self._with_tag(current, spec, phase, message, digest, report)
            if body == current:
                return True, current
            return True, await self.custom.replace_namespaced_custom_object(
                GROUP, VERSION, spec.namespace, PLURAL, spec.stream, body
            )

        return await retry_on_conflict(attempt, **_RETRY, what=f"ImageStream {spec.stream}")

    async def _end(
        self, current: dict | None, spec: BuildSpec, phase: str, message: str
    ) -> dict | None:
        if current is None:
            return None  # never create a stream for a build that ended without an image
        body = after_end(current, spec, phase, message)
        if body is None:
            rv = current["metadata"]["resourceVersion"]
            await ignore_not_found(
                self.custom.delete_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    spec.namespace,
                    PLURAL,
                    spec.stream,
                    body={"preconditions": {"resourceVersion": rv}},
                )
            )
            return None
        if body == current:
            return current
        return await self.custom.replace_namespaced_custom_object(
            GROUP, VERSION, spec.namespace, PLURAL, spec.stream, body
        )

    async def ready(
        self,
        spec: BuildSpec,
        digest: str,
        software: Packages | None = None,
        dependencies: Packages | None = None,
    ) -> dict:
        """The tags serve ``digest``; the image check's report (None: none) is annotated."""
        stream = await self.mark(
            spec, P.READY.value, digest=digest, report=(software, dependencies)
        )
        if not self.write_status:
            return stream

        async def attempt() -> tuple[bool, dict]:
            current = await self._read(spec)
            why = ownership(current, spec.repo) if current is not None else "was deleted"
            if why is not None:
                raise OwnershipError(spec, why)
            assert current is not None
            body = with_status_tag(current, spec, digest)
            if body.get("status") == current.get("status"):
                return True, current
            return True, await self.custom.replace_namespaced_custom_object_status(
                GROUP, VERSION, spec.namespace, PLURAL, spec.stream, body
            )

        return await retry_on_conflict(attempt, **_RETRY, what=f"ImageStream {spec.stream}")

    async def sweep(
        self, namespace: str, active: set[tuple[str, str]], grace_seconds: float
    ) -> list[str]:
        """Delete this builder's :func:`abandoned` streams in ``namespace``; their names."""
        now = utcnow()
        streams = await self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, label_selector=f"{MANAGED_BY_LABEL}={MANAGER}"
        )
        deleted = []
        for stream in streams.get("items") or []:
            if not abandoned(stream, active, now, grace_seconds):
                continue
            meta = stream["metadata"]
            try:
                await self.custom.delete_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    meta["name"],
                    body={"preconditions": {"resourceVersion": meta["resourceVersion"]}},
                )
                deleted.append(meta["name"])
            except ApiException as e:
                if e.status not in (404, 409):  # gone, or written meanwhile: next run
                    raise
        return deleted

    async def expire(self, namespace: str, now: datetime.datetime | None = None) -> list[dict]:
        """Remove the expired spec and status tags of this builder's ImageStreams in
        ``namespace`` (and a stream left without tags). Returns what was removed:
        ``{"stream", "tag", "build_id"}`` per tag (``tag`` None: the stream was deleted)."""
        now = now or utcnow()
        streams = await self.custom.list_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            label_selector=f"{MANAGED_BY_LABEL}={MANAGER}",
        )
        removed: list[dict] = []
        for listed in streams.get("items") or []:
            removed.extend(await self._expire_one(namespace, listed, now))
        return removed

    async def _expire_one(self, namespace: str, listed: dict, now: datetime.datetime) -> list:
        """:meth:`expire` of one stream (as listed; read again after a conflict)."""
        name = listed["metadata"]["name"]
        seen: list[dict | None] = [listed]

        async def attempt() -> tuple[bool, list]:
            stream = seen[-1]
            if stream is None:  # deleted meanwhile
                return True, []
            gone = expired(stream, now)
            if not gone:
                return True, []
            try:
                return True, await self._remove(namespace, stream, gone)
            except ApiException as e:
                if is_not_found(e):
                    return True, []
                if is_conflict(e):
                    seen.append(await or_none(self._get(namespace, name)))
                raise

        return await retry_on_conflict(attempt, **_RETRY, what=f"ImageStream {name}")

    def _get(self, namespace: str, name: str):
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

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
            seen = [updated]

            async def attempt() -> tuple[bool, None]:
                try:
                    await self.custom.replace_namespaced_custom_object_status(
                        GROUP, VERSION, namespace, PLURAL, name, without_tags(seen[-1], names)
                    )
                except ApiException as e:
                    if e.status in (404, 405):
                        return True, None
                    if is_conflict(e):
                        seen.append(await self._get(namespace, name))
                    raise
                return True, None

            await retry_on_conflict(attempt, **_RETRY, what=f"ImageStream {name} status")
        return removed
