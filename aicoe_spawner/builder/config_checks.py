"""What a type alone does not say about a builder setting (pure): :class:`Seconds`, and the
checks of :data:`CHECKS` that :class:`~aicoe_spawner.builder.config.ImageBuilder` runs on
every value, whatever its source (a Kubernetes quantity, image references, the Python base
images, http(s) URLs, the destinations, the image policy). Each takes the setting's name and
its value and returns the value to keep, or raises :class:`~traitlets.TraitError` naming the
setting."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from traitlets import Float, TraitError

from ..options import parse_memory
from .catalog_view import ImagePolicies
from .destinations import parse_destinations
from .requests import BuildRequestError, validate_image


class Seconds(Float):
    """A positive, finite number of seconds."""

    info_text = "a positive number of seconds"

    def validate(self, obj: Any, value: Any) -> float:
        value = super().validate(obj, value)
        if not (math.isfinite(value) and value > 0):
            self.error(obj, value)
        return value


def valid_quantity(name: str, value: str) -> str:
    """A Kubernetes quantity such as ``20Gi``."""
    try:
        parse_memory(value)
    except ValueError as e:
        raise TraitError(f"{name}: {e}") from None
    return value


def valid_host_folder(name: str, value: str) -> str:
    """An absolute path of plain path characters without ``..``, or "" (none)."""
    parts = value.split("/")[1:]
    if value and (not re.fullmatch(r"(/[A-Za-z0-9._-]+)+", value) or {".", ".."} & set(parts)):
        raise TraitError(f"{name}: {value!r} is not an absolute path of a folder ([A-Za-z0-9._-])")
    return value


def valid_image(name: str, value: str) -> str:
    """An image reference, as a build request's."""
    try:
        return validate_image(value, name)
    except BuildRequestError as e:
        raise TraitError(str(e)) from None


def valid_python_images(name: str, value: dict) -> dict:
    """``{"<major.minor>": <image>}``."""
    for version, image in value.items():
        if not re.fullmatch(r"\d+\.\d+", version):
            raise TraitError(f"{name}: {version!r} is not <major.minor>")
        try:
            validate_image(image, f"{name}[{version!r}]")
        except BuildRequestError as e:
            raise TraitError(str(e)) from None
    return value


def valid_url(name: str, value: str) -> str:
    """An http(s) URL (or ""), stripped and without a trailing slash."""
    value = value.strip()
    if value and not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", value):
        raise TraitError(f"{name}: {value[:80]!r} is not an http(s) URL")
    return value.rstrip("/")


def valid_destinations(name: str, value: list) -> list:
    """Per-project destinations (:func:`.destinations.parse_destinations`)."""
    try:
        parse_destinations(value)
    except ValueError as e:
        raise TraitError(f"{name}: {e}") from None
    return value


def valid_policy(name: str, value: dict) -> dict:
    """The spawner's ``default_policy`` and ``group_policies`` (:class:`ImagePolicies`)."""
    try:
        ImagePolicies.from_json(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise TraitError(f"{name}: {e}") from None
    return value


#: setting -> its check (name, value) -> the value kept
CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "build_storage": valid_quantity,
    "build_node_image_store": valid_host_folder,
    "build_image": valid_image,
    "base_image": valid_image,
    "python_base_images": valid_python_images,
    "github_api_url": valid_url,
    "public_url": valid_url,
    "destinations": valid_destinations,
    "image_policy": valid_policy,
}
