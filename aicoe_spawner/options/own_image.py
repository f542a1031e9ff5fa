"""A size's own image (``kubespawner_override.image``, or an unlisted choice's): pinned to a
digest through the catalog where the catalog knows it, else started as given with the reason.

Pure code: the catalog is a value, nothing here talks to Kubernetes.
"""

from __future__ import annotations

from dataclasses import dataclass

from aicoe_spawner.catalog import Catalog, ImageRefError, ImageTag, NotebookImage, parse_image_ref

from .errors import OptionsError

__all__ = ["OwnImage", "normalize_reference", "resolve_own_image"]

_DOCKER_HUB = "docker.io"


@dataclass(frozen=True, slots=True)
class OwnImage:
    """What starts for a size that brings its own image, and why."""

    #: As the profile (or the user's unlisted choice) wrote it.
    requested: str
    #: What the pod runs: the catalog's digest reference, or ``requested``.
    ref: str
    #: ``"profile"`` (the size or a listed choice) or ``"unlisted"`` (a value the user typed).
    source: str
    #: How ``ref`` was found: ``"catalog"`` (pinned by the catalog), ``"pinned"`` (the
    #: reference carries a digest) or ``"as-given"`` (``reason`` says why not pinned).
    resolution: str
    reason: str = ""
    image: NotebookImage | None = None
    tag: ImageTag | None = None

    @property
    def digest(self) -> str | None:
        _, at, digest = self.ref.rpartition("@")
        return digest if at and digest.startswith("sha256:") else None


def normalize_reference(ref: str) -> str:
    """``ref`` as a container runtime reads it: registry host, repository and ``:latest``
    when no tag or digest is given (``jupyter/x`` is ``docker.io/jupyter/x:latest``)."""
    ref = ref.strip()
    name, at, digest = ref.partition("@")
    first, slash, rest = name.partition("/")
    if not slash or not ("." in first or ":" in first or first == "localhost"):
        name = f"{_DOCKER_HUB}/{name}" if slash else f"{_DOCKER_HUB}/library/{name}"
    elif first in ("index.docker.io", "registry-1.docker.io"):
        name = f"{_DOCKER_HUB}/{rest}"
    if name.startswith(f"{_DOCKER_HUB}/") and name.count("/") == 1:
        name = f"{_DOCKER_HUB}/library/{name.partition('/')[2]}"
    if not at and ":" not in name.rpartition("/")[2]:
        name += ":latest"
    return name + at + digest


def _by_source(catalog: Catalog, wanted: str) -> tuple[NotebookImage, ImageTag] | None:
    """The first ready catalog tag that imports ``wanted`` (a registry reference)."""
    found = None
    for image in catalog.images:
        for tag in image.tags:
            if tag.source and normalize_reference(tag.source) == wanted:
                if tag.ready and tag.image_ref:
                    return image, tag
                found = found or (image, tag)
    return found


def resolve_own_image(
    requested: str, source: str, catalog: Catalog, default_namespace: str, field: str
) -> OwnImage:
    """Where ``requested`` is a registry reference a catalog tag imports, or a catalog
    ``[namespace/]stream:tag``, the tag's digest reference; a reference with a digest as it is;
    anything else as given, with the reason. A catalog image that is not ready is an
    :class:`OptionsError` naming ``field`` (starting the registry's idea of the name instead
    would start something else)."""
    ref = requested.strip()
    if "@sha256:" in ref:
        return OwnImage(requested, ref, source, "pinned", "the reference carries a digest")
    known = _by_source(catalog, normalize_reference(ref))
    if known is None:
        try:
            namespace, stream, tag_name = parse_image_ref(ref, default_namespace)
        except ImageRefError:
            pass
        else:
            image = catalog.get(namespace, stream)
            tag = image.tag(tag_name) if image is not None else None
            if tag is not None:
                known = (image, tag)
    if known is None:
        return OwnImage(
            requested,
            ref,
            source,
            "as-given",
            "not in the image catalog: started as given, not pinned to a digest",
        )
    image, tag = known
    if not tag.ready or not tag.image_ref:
        phase = getattr(tag.phase, "value", str(tag.phase))
        detail = f": {tag.message}" if tag.message else ""
        raise OptionsError(
            field, f"image {ref!r} is {image.key}:{tag.name} in the catalog, {phase}{detail}"
        )
    return OwnImage(
        requested,
        tag.image_ref,
        source,
        "catalog",
        f"pinned by the catalog: {image.key}:{tag.name}",
        image=image,
        tag=tag,
    )
