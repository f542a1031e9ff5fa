"""Policy: what one user may choose, from the admin's default policy and group policies."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from aicoe_spawner.catalog import Catalog, NotebookImage

from .errors import refuse_unknown_keys
from .errors import show as _show
from .errors import type_name as _type_name
from .quantities import parse_cpu, parse_memory
from .sizes import Size

#: Names the spawner or the container runtime own. Admins can add more; these always apply.
#: ``NVIDIA_VISIBLE_DEVICES`` / ``NVIDIA_DRIVER_CAPABILITIES`` would let a pod see GPUs it was
#: not allocated on nodes whose runtime honours them.
DEFAULT_RESERVED_ENV_NAMES = frozenset(
    {
        "JPY_API_TOKEN",
        "JUPYTERHUB_API_TOKEN",
        "JUPYTER_IMAGE",
        "JUPYTER_IMAGE_SPEC",
        "MEM_GUARANTEE",
        "MEM_LIMIT",
        "CPU_GUARANTEE",
        "CPU_LIMIT",
        "NVIDIA_VISIBLE_DEVICES",
        "NVIDIA_DRIVER_CAPABILITIES",
    }
)
DEFAULT_RESERVED_ENV_PREFIXES: tuple[str, ...] = (
    "JUPYTERHUB_",
    "JPY_",
    "JUPYTER_IMAGE",
    "MEM_",
    "CPU_",
)

ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
MAX_ENV_NAME_LENGTH = 256

#: Smallest custom CPU (cores) and memory (bytes) a user may ask for, unless the admin sets
#: others: below these a notebook server does not start usefully.
DEFAULT_MIN_CPU = 0.1
DEFAULT_MIN_MEMORY = 256 * 2**20

_POLICY_KEYS = frozenset({"images", "sizes", "max_gpus"})


@dataclass(frozen=True, slots=True)
class Policy:
    """What one user may choose: the union of the default policy and their groups' policies.

    Build it with :func:`effective_policy`. ``configured_sizes`` holds the names of every size
    the admin configured (allowed or not), so that an error can tell "no such size" from "not
    allowed for you".
    """

    image_patterns: tuple[str, ...]
    sizes: tuple[Size, ...]
    max_gpus: int
    allow_custom_resources: bool = False
    max_cpu: float | None = None
    max_memory: int | None = None
    min_cpu: float = DEFAULT_MIN_CPU
    min_memory: int = DEFAULT_MIN_MEMORY
    reserved_env_names: frozenset[str] = DEFAULT_RESERVED_ENV_NAMES
    reserved_env_prefixes: tuple[str, ...] = DEFAULT_RESERVED_ENV_PREFIXES
    max_env_vars: int = 50
    max_env_value_bytes: int = 32768
    configured_sizes: tuple[str, ...] = ()

    def allows_image(self, image: NotebookImage) -> bool:
        """True if a pattern matches ``"namespace/stream"`` or ``"stream"``."""
        return any(
            fnmatchcase(image.key, pattern) or fnmatchcase(image.name, pattern)
            for pattern in self.image_patterns
        )

    def offered_images(self, catalog: Catalog) -> tuple[NotebookImage, ...]:
        """The images this user is offered, in catalog order: not hidden and allowed. The spawn
        page's cards and the builder's ``GET api/images`` both show exactly these."""
        return tuple(i for i in catalog.visible() if self.allows_image(i))

    def size(self, name: str) -> Size | None:
        """The allowed size called ``name``."""
        return next((s for s in self.sizes if s.name == name), None)

    def default_size(self) -> Size | None:
        """The allowed size marked default, else the first allowed size."""
        return next((s for s in self.sizes if s.default), self.sizes[0] if self.sizes else None)

    def env_name_reserved(self, name: str) -> bool:
        return name in self.reserved_env_names or name.startswith(self.reserved_env_prefixes)


def _patterns(policy: Mapping, key: str, where: str, missing: list[str]) -> list[str]:
    value = policy.get(key, missing)
    if not isinstance(value, list | tuple) or not all(isinstance(p, str) for p in value):
        raise ValueError(f"{where}: {key!r} must be a list of fnmatch patterns (strings)")
    return list(value)


def _check_policy(policy: Any, where: str, default: bool) -> tuple[list[str], list[str], int]:
    """(image patterns, size patterns, max_gpus) of one policy dict; ValueError if invalid."""
    if not isinstance(policy, Mapping):
        raise ValueError(f"{where} must be a dict, got {_type_name(policy)}")
    refuse_unknown_keys(where, policy, _POLICY_KEYS)
    missing = ["*"] if default else []
    images = _patterns(policy, "images", where, missing)
    sizes = _patterns(policy, "sizes", where, missing)
    max_gpus = policy.get("max_gpus", 0)
    if isinstance(max_gpus, bool) or not isinstance(max_gpus, int) or max_gpus < 0:
        raise ValueError(f"{where}: 'max_gpus' must be an integer >= 0")
    return images, sizes, max_gpus


def effective_policy(
    *,
    sizes: list[Size],
    default_policy: dict,
    group_policies: dict[str, dict],
    groups: Iterable[str],
    max_gpus: int,
    allow_custom_resources: bool,
    max_cpu: float | str | None,
    max_memory: int | str | None,
    min_cpu: float | str = DEFAULT_MIN_CPU,
    min_memory: int | str = DEFAULT_MIN_MEMORY,
    reserved_env_names: Iterable[str],
    reserved_env_prefixes: Iterable[str],
    max_env_vars: int,
    max_env_value_bytes: int,
) -> Policy:
    """The policy of a user in ``groups``: the union of ``default_policy`` and their groups'.

    Policy dicts have the optional keys ``images`` (fnmatch patterns over ``"ns/stream"`` and
    ``"stream"``), ``sizes`` (fnmatch patterns over size names) and ``max_gpus``. A missing key
    means ``["*"]`` in the default policy and nothing in a group policy. Image patterns are
    unioned, sizes are the configured sizes matching any pattern (configured order kept) and
    max_gpus is the largest of ``max_gpus`` and every applicable policy's. Reserved env names and
    prefixes are added to the built-in ones, never replace them. Invalid config (unknown keys,
    wrong types, duplicate size names) raises ValueError naming the policy and key.
    """
    configured = list(sizes)
    for size in configured:
        if not isinstance(size, Size):
            raise ValueError(f"sizes must be Size objects, got {_type_name(size)}")
    names = [s.name for s in configured]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"sizes: duplicate size name(s) {', '.join(map(repr, duplicates))}")
    if not isinstance(group_policies, Mapping):
        raise ValueError(f"group_policies must be a dict, got {_type_name(group_policies)}")
    for label, value in (
        ("max_gpus", max_gpus),
        ("max_env_vars", max_env_vars),
        ("max_env_value_bytes", max_env_value_bytes),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{label} must be an integer >= 0, got {_show(value)}")

    image_patterns, size_patterns, gpus = _check_policy(default_policy, "default_policy", True)
    gpus = max(gpus, max_gpus)
    # Check every group policy, not only the user's, so a config mistake shows up at once.
    checked = {
        group: _check_policy(policy, f"group_policies[{group!r}]", False)
        for group, policy in group_policies.items()
    }
    for group in groups:
        group_name = getattr(group, "name", group)
        if group_name in checked:
            images, size_globs, group_gpus = checked[group_name]
            image_patterns += [p for p in images if p not in image_patterns]
            size_patterns += size_globs
            gpus = max(gpus, group_gpus)

    allowed = tuple(s for s in configured if any(fnmatchcase(s.name, p) for p in size_patterns))

    def bound(label: str, value: Any, parse) -> Any:
        try:
            return None if value is None else parse(value)
        except ValueError as e:
            raise ValueError(f"{label}: {e}") from None

    cpu_bound = bound("max_cpu", max_cpu, parse_cpu)
    memory_bound = bound("max_memory", max_memory, parse_memory)
    cpu_floor = bound("min_cpu", min_cpu, parse_cpu)
    memory_floor = bound("min_memory", min_memory, parse_memory)
    if cpu_bound is not None and cpu_floor > cpu_bound:
        raise ValueError(f"min_cpu ({cpu_floor}) is greater than max_cpu ({cpu_bound})")
    if memory_bound is not None and memory_floor > memory_bound:
        raise ValueError("min_memory is greater than max_memory")
    extra_names = _strings(reserved_env_names, "reserved_env_names")
    extra_prefixes = _strings(reserved_env_prefixes, "reserved_env_prefixes")
    prefixes = DEFAULT_RESERVED_ENV_PREFIXES + tuple(
        p for p in dict.fromkeys(extra_prefixes) if p not in DEFAULT_RESERVED_ENV_PREFIXES
    )
    return Policy(
        image_patterns=tuple(image_patterns),
        sizes=allowed,
        max_gpus=gpus,
        allow_custom_resources=bool(allow_custom_resources),
        max_cpu=cpu_bound,
        max_memory=memory_bound,
        min_cpu=cpu_floor,
        min_memory=memory_floor,
        reserved_env_names=DEFAULT_RESERVED_ENV_NAMES | frozenset(extra_names),
        reserved_env_prefixes=prefixes,
        max_env_vars=max_env_vars,
        max_env_value_bytes=max_env_value_bytes,
        configured_sizes=tuple(names),
    )


def image_policy(
    default_policy: dict, group_policies: dict[str, dict], groups: Iterable[str]
) -> Policy:
    """:func:`effective_policy` for a process that shows the catalog but spawns nothing (the
    builder's ``GET api/images``): the same ``default_policy`` and ``group_policies`` dicts as
    the spawner's, checked the same way (ValueError); only the image patterns matter."""
    return effective_policy(
        sizes=[],
        default_policy=default_policy,
        group_policies=group_policies,
        groups=groups,
        max_gpus=0,
        allow_custom_resources=False,
        max_cpu=None,
        max_memory=None,
        reserved_env_names=(),
        reserved_env_prefixes=(),
        max_env_vars=0,
        max_env_value_bytes=0,
    )


def _strings(values: Iterable[str], label: str) -> list[str]:
    if isinstance(values, str):
        raise ValueError(f"{label} must be a list of strings, not a string")
    out = list(values)
    if not all(isinstance(v, str) and v for v in out):
        raise ValueError(f"{label} must be a list of non-empty strings")
    return out
