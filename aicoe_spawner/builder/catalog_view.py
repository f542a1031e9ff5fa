"""What ``GET api/images`` shows one user: the catalog as their spawn page offers it.

Hidden images are left out and the spawner's ``default_policy`` and ``group_policies`` apply,
through the spawner's own policy code (:func:`aicoe_spawner.options.image_policy`,
:meth:`Policy.offered_images`). Builder admins see every image, hidden ones included. Pure
code: the handler gives the catalog and the user's groups.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..catalog import Catalog, NotebookImage
from ..options import Policy, image_policy


@dataclass(frozen=True)
class ImagePolicies:
    """The spawner's ``default_policy`` and ``group_policies``, as the builder applies them.

    Empty (the default): every user sees every image that is not hidden, as the spawner's
    default policy offers them. Invalid dicts raise ValueError when built, not per request.
    """

    default_policy: Mapping[str, Any] = field(default_factory=dict)
    group_policies: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.for_groups(())

    @classmethod
    def from_json(cls, text: str) -> ImagePolicies:
        """``{"default_policy": {…}, "group_policies": {"<group>": {…}}}``, both keys optional
        (empty text: no policy); ValueError naming what is wrong."""
        if not text.strip():
            return cls()
        try:
            value = json.loads(text)
        except ValueError as e:
            raise ValueError(f"not JSON ({e})") from None
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object with default_policy and group_policies")
        unknown = sorted(set(value) - {"default_policy", "group_policies"})
        if unknown:
            raise ValueError(
                f"unknown key(s) {', '.join(map(repr, unknown))}: "
                "use default_policy and group_policies"
            )
        return cls(value.get("default_policy") or {}, value.get("group_policies") or {})

    def for_groups(self, groups: Iterable[str]) -> Policy:
        return image_policy(dict(self.default_policy), dict(self.group_policies), groups)


def viewer_policy(policies: ImagePolicies, groups: Iterable[str], admin: bool) -> Policy | None:
    """The policy deciding what one user sees; None for builder admins, who see every image.
    Users with equal policies see the same images (the handler caches by it)."""
    return None if admin else policies.for_groups(groups)


def shown_images(catalog: Catalog, policy: Policy | None) -> tuple[NotebookImage, ...]:
    """What a user with ``policy`` (:func:`viewer_policy`) sees: their spawn page's images."""
    return catalog.images if policy is None else policy.offered_images(catalog)


def render_images(images: Iterable[NotebookImage], stale: bool) -> str:
    """The JSON body of ``GET api/images``: each tag of each image with phase and digest."""
    rows = [
        {
            "image": f"{image.namespace}/{image.name}:{tag.name}",
            "display_name": image.display_name,
            "hidden": image.hidden,
            "phase": tag.phase.value,
            "digest": tag.digest,
            "image_ref": tag.image_ref,
            "message": tag.message,
            "build_commit": tag.build_commit,
        }
        for image in images
        for tag in image.tags
    ]
    return json.dumps({"images": rows, "stale": stale})
