"""The ImageStream of a build, without I/O (pure): the stream (notebook label, ODH
annotations), its tags (build commit, build phase/message) and, when the build pushed an
image, the status tags pinned to the digest; expiry and abandoned streams.
:class:`~.registration.Registrar` writes them.

The builder writes only streams it owns for the build's repository (:func:`ownership`); a
failed build publishes a generic reason (:func:`public_reason`), never its log, and never
takes a tag that already serves an image out of service."""

from __future__ import annotations

import copy
import datetime
from typing import Any

from ..catalog import BUILD_MESSAGE_ANNOTATION, BUILD_PHASE_ANNOTATION, NOTEBOOK_IMAGE_LABEL
from .image_check import Packages, packages_annotation
from .naming import user_label
from .publish import OPTIONS_ANNOTATION, PUBLISHER_ANNOTATION, options_text
from .requests import BuildRequestError, BuildSpec
from .vocabulary import MANAGED_BY, MANAGED_BY_LABEL, L, parse_stamp, stamp
from .vocabulary import BuildPhase as P

GROUP, VERSION, PLURAL = "image.openshift.io", "v1", "imagestreams"
A = "opendatahub.io/"
MESSAGE_LIMIT = 2000
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
