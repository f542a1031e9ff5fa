"""The image catalog: Open Data Hub style ImageStreams turned into plain, immutable values.

Pure code: input is ImageStream objects as plain dicts (the API server's JSON), output is a
:class:`Catalog`. Nothing here talks to Kubernetes, and malformed input never raises.
"""

from __future__ import annotations

import enum
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("aicoe_spawner.catalog")

ANNOTATION_PREFIX = "opendatahub.io/"
NOTEBOOK_IMAGE_LABEL = "opendatahub.io/notebook-image"
BUILD_PHASE_ANNOTATION = "aicoe-spawner.io/build-phase"
BUILD_MESSAGE_ANNOTATION = "aicoe-spawner.io/build-message"
DEFAULT_ORDER = 100

_A = ANNOTATION_PREFIX
_NAMESPACE_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_STREAM_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


class TagPhase(enum.StrEnum):
    READY = "ready"
    BUILDING = "building"
    FAILED = "failed"
    PENDING = "pending"


@dataclass(frozen=True, slots=True)
class Package:
    name: str
    version: str


@dataclass(frozen=True, slots=True)
class ImageTag:
    name: str
    phase: TagPhase
    image_ref: str | None
    message: str
    recommended: bool
    default: bool
    outdated: bool
    software: tuple[Package, ...]
    python_dependencies: tuple[Package, ...]
    build_commit: str | None
    #: The registry reference the tag imports (``spec.tags[].from`` of kind DockerImage).
    source: str | None = None

    @property
    def ready(self) -> bool:
        return self.phase is TagPhase.READY

    @property
    def digest(self) -> str | None:
        """The ``sha256:…`` part of :attr:`image_ref`, if pinned."""
        if self.image_ref and "@sha256:" in self.image_ref:
            return self.image_ref.rpartition("@")[2]
        return None


@dataclass(frozen=True, slots=True)
class NotebookImage:
    namespace: str
    name: str
    display_name: str
    description: str
    url: str | None
    order: int
    hidden: bool
    recommended_accelerators: tuple[str, ...]
    creator: str | None
    tags: tuple[ImageTag, ...]
    resource_version: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def tag(self, name: str) -> ImageTag | None:
        return next((t for t in self.tags if t.name == name), None)

    def offered_tags(self) -> tuple[ImageTag, ...]:
        """Tags that may be used for new servers (not outdated), in spec order."""
        return tuple(t for t in self.tags if not t.outdated)

    def preferred_tag(self) -> ImageTag | None:
        """Default-annotated, else recommended, else first ready, else first offered tag."""
        offered = self.offered_tags()
        for wanted in (lambda t: t.default, lambda t: t.recommended, lambda t: t.ready):
            found = next((t for t in offered if wanted(t)), None)
            if found is not None:
                return found
        return offered[0] if offered else None


@dataclass(frozen=True, slots=True)
class Catalog:
    images: tuple[NotebookImage, ...]

    @classmethod
    def of(cls, images: Iterable[NotebookImage]) -> Catalog:
        """A catalog of parsed images in catalog order: order, display name, namespace, name."""
        return cls(
            tuple(
                sorted(
                    images, key=lambda i: (i.order, i.display_name.casefold(), i.namespace, i.name)
                )
            )
        )

    def visible(self) -> tuple[NotebookImage, ...]:
        return tuple(i for i in self.images if not i.hidden)

    def get(self, namespace: str, name: str) -> NotebookImage | None:
        return next((i for i in self.images if (i.namespace, i.name) == (namespace, name)), None)

    def default_choice(self) -> tuple[NotebookImage, ImageTag] | None:
        """First visible READY offered tag annotated default, else recommended, else any."""
        visible = self.visible()
        for wanted in (lambda t: t.default, lambda t: t.recommended, lambda t: True):
            for image in visible:
                for tag in image.offered_tags():
                    if tag.ready and wanted(tag):
                        return image, tag
        return None


class ImageRefError(ValueError):
    """An image reference given by a user is malformed."""


def parse_image_ref(ref: str, default_namespace: str) -> tuple[str, str, str]:
    """``<stream>:<tag>`` or ``<namespace>/<stream>:<tag>`` -> ``(namespace, stream, tag)``."""
    if not isinstance(ref, str):
        raise ImageRefError(f"image reference must be a string, not {type(ref).__name__}")
    shown = ref if len(ref) <= 80 else ref[:77] + "..."
    error = ImageRefError(
        f"image reference {shown!r} must look like <stream>:<tag> or <namespace>/<stream>:<tag>"
    )
    if ref.count(":") != 1 or ref.count("/") > 1:
        raise error
    path, _, tag = ref.partition(":")
    namespace, _, stream = path.rpartition("/")
    if "/" not in path:
        namespace = default_namespace
    elif not (len(namespace) <= 63 and _NAMESPACE_RE.fullmatch(namespace)):
        raise error
    if not (len(stream) <= 253 and _STREAM_RE.fullmatch(stream) and _TAG_RE.fullmatch(tag)):
        raise error
    return namespace, stream, tag


def format_image_ref(image: NotebookImage, tag: ImageTag, default_namespace: str) -> str:
    """The shortest reference :func:`parse_image_ref` maps back to ``image`` and ``tag``."""
    if image.namespace == default_namespace:
        return f"{image.name}:{tag.name}"
    return f"{image.namespace}/{image.name}:{tag.name}"


# -- parsing helpers: each returns a safe value for any input --------------------------------


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _is_true(value: Any) -> bool:
    return _str(value).lower() == "true"


def _json_list(value: Any) -> list:
    if not isinstance(value, str):
        return []
    try:
        return _list(json.loads(value))
    except (ValueError, RecursionError):
        return []


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return ""
    return str(value).strip() if isinstance(value, str | int | float) else ""


def _packages(value: Any) -> tuple[Package, ...]:
    entries = (_dict(e) for e in _json_list(value))
    return tuple(
        Package(_scalar(e["name"]), _scalar(e.get("version")))
        for e in entries
        if _scalar(e.get("name"))
    )


def _order(value: Any) -> int:
    text = _str(value)
    return int(text) if re.fullmatch(r"[+-]?[0-9]{1,9}", text) else DEFAULT_ORDER


def _url(value: Any) -> str | None:
    url = _str(value)
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    ok = parts.scheme.lower() in ("http", "https") and parts.netloc
    return url if ok and url.isprintable() and " " not in url else None


def _readiness(annotations: dict, status: dict) -> tuple[TagPhase, str | None, str]:
    """(phase, image_ref, message) by the precedence documented in DESIGN.md."""
    build_phase = _str(annotations.get(BUILD_PHASE_ANNOTATION))
    if build_phase == "failed":
        message = _str(annotations.get(BUILD_MESSAGE_ANNOTATION))
        return TagPhase.FAILED, None, message or "build failed"
    items = _list(status.get("items"))
    ref = _str(_dict(items[0]).get("dockerImageReference")) if items else ""
    failed = next(
        (c for c in map(_dict, _list(status.get("conditions"))) if c.get("status") == "False"),
        None,
    )
    if "@sha256:" in ref:
        if failed is not None:  # OpenShift keeps the last image while a re-import fails
            said = _str(failed.get("message")) or _str(failed.get("reason")) or "failed"
            return TagPhase.READY, ref, f"the last imported image; importing again failed: {said}"
        return TagPhase.READY, ref, ""
    if build_phase == "building":
        return TagPhase.BUILDING, None, ""
    if build_phase == "pending":  # a build for it is queued, not running yet
        return TagPhase.PENDING, None, ""
    if failed is not None:
        message = _str(failed.get("message")) or _str(failed.get("reason"))
        return TagPhase.FAILED, None, message or "import failed"
    if ref:
        return TagPhase.PENDING, None, "image reference is not pinned to a digest"
    return TagPhase.PENDING, None, ""


def _tag(spec: dict, status: dict) -> ImageTag:
    ann = _dict(spec.get("annotations"))
    phase, image_ref, message = _readiness(ann, status)
    if f"{_A}workbench-image-recommended" in ann:
        recommended = _is_true(ann[f"{_A}workbench-image-recommended"])
    else:
        recommended = bool(_str(ann.get(f"{_A}notebook-image-recommended")))
    return ImageTag(
        name=spec["name"],
        phase=phase,
        image_ref=image_ref,
        message=message,
        recommended=recommended,
        default=_is_true(ann.get(f"{_A}default-image")),
        outdated=f"{_A}image-tag-outdated" in ann,
        software=_packages(ann.get(f"{_A}notebook-software")),
        python_dependencies=_packages(ann.get(f"{_A}notebook-python-dependencies")),
        build_commit=_str(ann.get(f"{_A}notebook-build-commit")) or None,
        source=_docker_source(spec),
    )


def _docker_source(spec: dict) -> str | None:
    source = _dict(spec.get("from"))
    return (_str(source.get("name")) or None) if source.get("kind") == "DockerImage" else None


def _named(entries: Any, key: str) -> dict[str, dict]:
    """Map of entries with a non-empty string ``key``; the first of duplicates wins."""
    out: dict[str, dict] = {}
    for entry in map(_dict, _list(entries)):
        name = entry.get(key)
        if isinstance(name, str) and name and name not in out:
            out[name] = entry
    return out


def parse_imagestream(obj: dict) -> NotebookImage | None:
    """One ImageStream as a :class:`NotebookImage`, or None if it has no name or namespace."""
    meta = _dict(_dict(obj).get("metadata"))
    namespace, name = meta.get("namespace"), meta.get("name")
    if not (isinstance(name, str) and name and isinstance(namespace, str) and namespace):
        shown = "/".join(
            repr(v[:80]) if isinstance(v, str) else type(v).__name__ for v in (namespace, name)
        )
        log.warning("Skipping ImageStream without metadata.namespace and name: %s", shown)
        return None
    ann = _dict(meta.get("annotations"))
    statuses = _named(_dict(obj.get("status")).get("tags"), "tag")
    specs = _named(_dict(obj.get("spec")).get("tags"), "name")
    accelerators = _json_list(ann.get(f"{_A}recommended-accelerators"))
    return NotebookImage(
        namespace=namespace,
        name=name,
        display_name=_str(ann.get(f"{_A}notebook-image-name")) or name,
        description=_str(ann.get(f"{_A}notebook-image-desc")),
        url=_url(ann.get(f"{_A}notebook-image-url")),
        order=_order(ann.get(f"{_A}notebook-image-order")),
        hidden=_is_true(ann.get(f"{_A}notebook-image-hidden")),
        recommended_accelerators=tuple(a for a in accelerators if isinstance(a, str) and a),
        creator=_str(ann.get(f"{_A}notebook-image-creator")) or None,
        # a tag only in status.tags (pushed by a BuildConfig) is a version as in ODH
        tags=tuple(_tag(spec, statuses.get(tag, {})) for tag, spec in specs.items())
        + tuple(
            _tag({"name": tag}, status) for tag, status in statuses.items() if tag not in specs
        ),
        resource_version=_str(meta.get("resourceVersion")),
    )


def build_catalog(objs: Iterable[dict]) -> Catalog:
    """Parse ImageStreams into a sorted catalog (unidentifiable and duplicate ones dropped)."""
    images: dict[str, NotebookImage] = {}
    for obj in objs:
        image = parse_imagestream(obj)
        if image is not None and image.key not in images:
            images[image.key] = image
    return Catalog.of(images.values())
