"""A repository's ``.aicoe-ci.yaml`` (AICoE-CI's build section) as plain options (pure).

Recognised under ``build:`` (and under each ``overlays[].build``, one image per overlay, on top
of the top-level ``build``): ``build-strategy`` (and the historical ``build-stratergy``):
``Source`` | ``Dockerfile`` | ``Containerfile``; ``base-image``; ``dockerfile-path``;
``context-dir``; ``registry``, ``registry-org`` and ``registry-project`` (whether they may
steer the push is :mod:`.destinations`' decision); ``custom-tag``. Unknown keys are ignored
(the file also configures AICoE-CI checks); wrong types, YAML the parser cannot read and
values it refuses (deep nesting, huge integers) raise :class:`BuildRequestError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from .fields import (
    BuildRequestError,
    validate_image,
    validate_relative_path,
    validate_strategy,
)

MAX_BYTES = 64 * 1024
MAX_OVERLAYS = 10
F = ".aicoe-ci.yaml"
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")
_OVERLAY_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,18}[a-z0-9])?")


@dataclass(frozen=True)
class CIConfig:
    build_strategy: str | None = None
    base_image: str | None = None
    dockerfile_path: str | None = None
    context_dir: str = ""
    registry: str | None = None
    registry_org: str | None = None
    registry_project: str | None = None
    custom_tag: str | None = None
    notes: tuple[str, ...] = ()
    containerfile: bool = False  # strategy Containerfile: the default file is Containerfile
    overlay: str = ""  # overlay name ("" = the top-level build)
    project_field: str = f"{F} build.registry-project"  # where registry-project came from
    registry_field: str = f"{F} build.registry"  # where registry came from
    org_field: str = f"{F} build.registry-org"  # where registry-org came from


def _str(build: dict, key: str, where: str) -> str | None:
    value = build.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise BuildRequestError(f"{where}.{key}", "must be a string")
    return str(value).strip()


def _load(text: str | bytes) -> Any:
    if len(text) > MAX_BYTES:
        raise BuildRequestError(F, f"larger than {MAX_BYTES} bytes")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise BuildRequestError(F, f"not valid YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise BuildRequestError(F, "nested too deeply") from None
    except ValueError as e:  # e.g. an integer of thousands of digits
        raise BuildRequestError(F, f"a value cannot be read ({str(e)[:120]})") from None


def _options(build: dict, where: str, base: CIConfig, overlay: str) -> CIConfig:
    """``build`` (a mapping at ``where``) over ``base``."""
    notes = list(base.notes)
    strategy = _str(build, "build-strategy", where)
    if strategy is None and _str(build, "build-stratergy", where) is not None:
        strategy = _str(build, "build-stratergy", where)
        notes.append(f"{where}: 'build-stratergy' read as 'build-strategy'")
    custom_tag = _str(build, "custom-tag", where)
    if custom_tag is not None and not _TAG_RE.fullmatch(custom_tag):
        raise BuildRequestError(f"{where}.custom-tag", "is not a valid image tag")
    registry = _str(build, "registry", where)
    if registry is not None:
        validate_image(registry, f"{where}.registry")
    base_image = _str(build, "base-image", where)
    dockerfile = _str(build, "dockerfile-path", where)
    context = _str(build, "context-dir", where)
    project = _str(build, "registry-project", where)
    org = _str(build, "registry-org", where)
    return CIConfig(
        build_strategy=validate_strategy(strategy, f"{where}.build-strategy")
        if strategy
        else base.build_strategy,
        base_image=validate_image(base_image, f"{where}.base-image")
        if base_image
        else base.base_image,
        dockerfile_path=validate_relative_path(dockerfile, f"{where}.dockerfile-path")
        if dockerfile
        else base.dockerfile_path,
        context_dir=validate_relative_path(context, f"{where}.context-dir")
        if context
        else base.context_dir,
        registry=registry or base.registry,
        registry_org=org or base.registry_org,
        registry_project=project or base.registry_project,
        custom_tag=custom_tag or base.custom_tag,
        notes=tuple(notes),
        containerfile=strategy.strip().lower() == "containerfile"
        if strategy
        else base.containerfile,
        overlay=overlay,
        project_field=f"{where}.registry-project" if project else base.project_field,
        registry_field=f"{where}.registry" if registry else base.registry_field,
        org_field=f"{where}.registry-org" if org else base.org_field,
    )


def parse_ci_configs(text: str | bytes | None) -> list[CIConfig]:
    """One :class:`CIConfig` per image: one per ``overlays[]`` entry, else the ``build``."""
    if text is None:
        return [CIConfig()]
    doc = _load(text)
    if doc is None:
        return [CIConfig()]
    if not isinstance(doc, dict):
        raise BuildRequestError(F, "must be a YAML mapping")
    build = doc.get("build") or {}
    if not isinstance(build, dict):
        raise BuildRequestError(f"{F} build", "must be a mapping")
    top = _options(build, f"{F} build", CIConfig(), "")
    overlays = doc.get("overlays")
    if overlays is None:
        return [top]
    if not isinstance(overlays, list) or not overlays:
        raise BuildRequestError(f"{F} overlays", "must be a non-empty list of mappings")
    if len(overlays) > MAX_OVERLAYS:
        raise BuildRequestError(f"{F} overlays", f"more than {MAX_OVERLAYS} overlays")
    out, names = [], set()
    for i, entry in enumerate(overlays):
        where = f"{F} overlays[{i}]"
        if not isinstance(entry, dict):
            raise BuildRequestError(where, "must be a mapping with name and build")
        name = entry.get("name")
        if not isinstance(name, str) or not _OVERLAY_RE.fullmatch(name.strip().lower()):
            raise BuildRequestError(
                f"{where}.name", "must be a name of lowercase letters, digits and '-' (≤ 20)"
            )
        name = name.strip().lower()
        if name in names:
            raise BuildRequestError(f"{where}.name", f"{name!r} appears twice")
        names.add(name)
        obuild = entry.get("build") or {}
        if not isinstance(obuild, dict):
            raise BuildRequestError(f"{where}.build", "must be a mapping")
        out.append(_options(obuild, f"{where}.build", top, name))
    return out


def parse_ci_config(text: str | bytes | None) -> CIConfig:
    """The top-level build (the first overlay's where the file has overlays)."""
    return parse_ci_configs(text)[0]
