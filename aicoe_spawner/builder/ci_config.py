"""A repository's ``.aicoe-ci.yaml`` (AICoE-CI's build section) as plain options (pure).

Recognised under ``build:``: ``build-strategy`` (and the historical ``build-stratergy``):
``Source`` | ``Dockerfile``; ``base-image``; ``dockerfile-path``; ``context-dir``;
``registry``; ``registry-org``; ``registry-project``; ``custom-tag``. Unknown keys are ignored
(the file also configures AICoE-CI checks); wrong types raise :class:`BuildRequestError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from .requests import (
    BuildRequestError,
    validate_image,
    validate_relative_path,
    validate_strategy,
)

MAX_BYTES = 64 * 1024
F = ".aicoe-ci.yaml"


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


def _str(build: dict, key: str) -> str | None:
    value = build.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise BuildRequestError(f"{F} build.{key}", "must be a string")
    return str(value).strip()


def parse_ci_config(text: str | bytes | None) -> CIConfig:
    if text is None:
        return CIConfig()
    if len(text) > MAX_BYTES:
        raise BuildRequestError(F, f"larger than {MAX_BYTES} bytes")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise BuildRequestError(F, f"not valid YAML ({str(e).splitlines()[0]})") from None
    if doc is None:
        return CIConfig()
    if not isinstance(doc, dict):
        raise BuildRequestError(F, "must be a YAML mapping")
    build = doc.get("build") or {}
    if not isinstance(build, dict):
        raise BuildRequestError(f"{F} build", "must be a mapping")
    notes = []
    strategy = _str(build, "build-strategy")
    if strategy is None and _str(build, "build-stratergy") is not None:
        strategy = _str(build, "build-stratergy")
        notes.append(f"{F}: 'build-stratergy' read as 'build-strategy'")
    custom_tag = _str(build, "custom-tag")
    if custom_tag is not None:
        import re

        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}", custom_tag):
            raise BuildRequestError(f"{F} build.custom-tag", "is not a valid image tag")
    registry = _str(build, "registry")
    if registry is not None:
        validate_image(registry, f"{F} build.registry")
    return CIConfig(
        build_strategy=validate_strategy(strategy, f"{F} build.build-strategy")
        if strategy
        else None,
        base_image=validate_image(v, f"{F} build.base-image")
        if (v := _str(build, "base-image"))
        else None,
        dockerfile_path=validate_relative_path(
            _str(build, "dockerfile-path"), f"{F} build.dockerfile-path"
        )
        or None,
        context_dir=validate_relative_path(_str(build, "context-dir"), f"{F} build.context-dir"),
        registry=registry,
        registry_org=_str(build, "registry-org"),
        registry_project=_str(build, "registry-project"),
        custom_tag=custom_tag,
        notes=tuple(notes),
    )
