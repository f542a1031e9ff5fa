"""Which images to keep on the nodes: the catalog in, an ordered list of digests out (pure).

Every listed (not hidden) image contributes its recommended ready tag first, then, up to
``tags_per_image``, its other ready offered tags in spec order. Images are taken in rounds —
every image's first choice (in catalog order) before any image's second — so a count limit
keeps one version of as many images as possible. Equal digests are pulled once. The list is cut
at ``max_images`` and, when sizes are known, at ``max_bytes`` (an image of unknown size counts
as 0 bytes, so a registry that hides sizes never empties the list).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..catalog import Catalog, ImageTag, NotebookImage


@dataclass(frozen=True, slots=True)
class PullImage:
    """One image to keep: ``image_ref`` is digest-pinned (``registry/repo@sha256:…``)."""

    image_ref: str
    digest: str
    stream: str  # namespace/name of the first stream that lists it
    tag: str


@dataclass(frozen=True, slots=True)
class Limits:
    max_images: int = 20  # 0: no image at all
    max_bytes: int = 0  # 0: no size limit
    tags_per_image: int = 1


def ordered_tags(image: NotebookImage) -> list[ImageTag]:
    """The image's ready, offered, digest-pinned tags, recommended first: default-annotated,
    then recommended, then the rest in spec order."""
    ready = [t for t in image.offered_tags() if t.ready and t.digest]
    first = next((t for t in ready if t.default), None) or next(
        (t for t in ready if t.recommended), None
    )
    return ([first] if first else []) + [t for t in ready if t is not first]


def plan(
    catalog: Catalog, limits: Limits, sizes: Mapping[str, int | None] | None = None
) -> list[PullImage]:
    """The images to keep, in pull order, within ``limits`` (``sizes``: digest -> bytes)."""
    per_image = [
        ordered_tags(image)[: max(limits.tags_per_image, 0)] for image in catalog.visible()
    ]
    keys = [image.key for image in catalog.visible()]
    out: list[PullImage] = []
    seen: set[str] = set()
    total = 0
    for round_ in range(max((len(tags) for tags in per_image), default=0)):
        for key, tags in zip(keys, per_image, strict=True):
            if round_ >= len(tags):
                continue
            tag = tags[round_]
            assert tag.digest is not None and tag.image_ref is not None
            if tag.digest in seen:
                continue
            if len(out) >= limits.max_images:
                return out
            size = (sizes or {}).get(tag.digest) or 0
            if limits.max_bytes and total + size > limits.max_bytes:
                continue  # a smaller image further down may still fit
            seen.add(tag.digest)
            total += size
            out.append(PullImage(tag.image_ref, tag.digest, key, tag.name))
    return out
