"""User options: form data, query data and REST JSON turned into validated :class:`SpawnOptions`.

Pure code: no Kubernetes client, no tornado, no traitlets. The contract is DESIGN.md,
"user_options (form and REST API alike)". The one entry point for every source of options is
:func:`validate`; :func:`options_from_form` only reshapes HTML form / query data into the JSON
shape first. Every problem with user input is an :class:`OptionsError` whose message starts with
the offending field, so the spawner can turn it into an HTTP 400 as is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import Any

from aicoe_spawner.catalog import (
    Catalog,
    ImageRefError,
    ImageTag,
    NotebookImage,
    format_image_ref,
    parse_image_ref,
)

__all__ = [
    "DEFAULT_RESERVED_ENV_NAMES",
    "DEFAULT_RESERVED_ENV_PREFIXES",
    "KNOWN_KEYS",
    "STORED_ONLY_KEYS",
    "OptionsError",
    "Policy",
    "Size",
    "SpawnOptions",
    "effective_policy",
    "format_cpu",
    "format_memory",
    "options_from_form",
    "parse_cpu",
    "parse_memory",
    "validate",
]

KNOWN_KEYS = frozenset({"image", "size", "cpu", "memory", "gpus", "env", "secret_env"})

#: Keys that :meth:`SpawnOptions.to_user_options` writes for JupyterHub's database. JupyterHub
#: reuses saved options for a spawn request that carries none, so :func:`validate` accepts them
#: (and ignores them) instead of rejecting the user's own saved options as unknown.
STORED_ONLY_KEYS = frozenset({"secret_env_names"})

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

_POLICY_KEYS = frozenset({"images", "sizes", "max_gpus"})
_SIZE_KEYS = frozenset(
    {
        "name",
        "display_name",
        "description",
        "cpu_guarantee",
        "cpu_limit",
        "mem_guarantee",
        "mem_limit",
        "default",
    }
)
_SINGLE_FORM_FIELDS = ("image", "size", "cpu", "memory", "gpus")
_OPTIONAL_WHEN_EMPTY = frozenset({"cpu", "memory", "gpus"})
_FORM_PAIRS = (
    ("env", "env_name", "env_value"),
    ("secret_env", "secret_env_name", "secret_env_value"),
)
_FORM_DROPPED = frozenset({"_xsrf"})

# A Kubernetes quantity without a sign: digits with an optional fraction, then a binary or
# decimal SI suffix or a (short) decimal exponent. No spaces, no "inf"/"nan", no "1_000".
_QUANTITY_RE = re.compile(
    r"(?P<number>[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
    r"(?:(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE](?P<exponent>[+-]?[0-9]{1,3}))?",
    re.ASCII,
)
_MAX_QUANTITY_LENGTH = 64
_MAX_MEMORY = 2**63 - 1
_SUFFIXES = {
    None: Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


class OptionsError(ValueError):
    """A user_options problem; ``str(e) == f"{field}: {reason}"``.

    For example ``"gpus: must be an integer from 0 to 2, got 'abc'"``.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.field = field
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


# -- quantities -------------------------------------------------------------------------------


def _show(value: Any, limit: int = 60) -> str:
    """``repr`` of user input, shortened so error messages stay readable."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    return type(value).__name__


def _quantity(text: str) -> Decimal:
    """A non-negative Kubernetes quantity string as an exact Decimal; ValueError if malformed."""
    if len(text) > _MAX_QUANTITY_LENGTH:
        raise ValueError(f"quantity {_show(text)} is too long")
    match = _QUANTITY_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{_show(text)} is not a quantity like '2', '500m', '1.5Gi' or '512Mi'")
    number = Decimal(match["number"])
    if match["exponent"] is not None:
        return number.scaleb(int(match["exponent"]))
    return number * _SUFFIXES[match["suffix"]]


def parse_cpu(value: str | int | float) -> float:
    """CPU cores from ``"500m"``, ``"2"``, ``"1.5"``, ``2`` or ``0.5``; ValueError if malformed.

    Zero is accepted here (a size may guarantee no CPU); negative, infinite and NaN values,
    booleans and other types are not.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"CPU must be a quantity string or a number, got {_type_name(value)}")
    if isinstance(value, str):
        cores = float(_quantity(value))
    else:
        try:
            cores = float(value)
        except OverflowError:
            raise ValueError(f"CPU {_show(value)} is out of range") from None
    if not math.isfinite(cores):
        raise ValueError(f"CPU {_show(value)} is out of range")
    if cores < 0:
        raise ValueError(f"CPU must not be negative, got {_show(value)}")
    return cores


def parse_memory(value: str | int) -> int:
    """Bytes from a Kubernetes quantity (``"512Mi"``, ``"2G"``, ``"1.5Gi"``) or an int.

    Fractional bytes are rounded up as Kubernetes does. Negative values, floats, booleans and
    other types raise ValueError.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(
            f"memory must be a quantity string or an integer number of bytes, "
            f"got {_type_name(value)}"
        )
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"memory must not be negative, got {value}")
        if value > _MAX_MEMORY:
            raise ValueError(f"memory {_show(value)} is out of range")
        return value
    amount = _quantity(value)
    if amount > _MAX_MEMORY:
        raise ValueError(f"memory {_show(value)} is out of range")
    return math.ceil(amount)


def format_cpu(cores: float) -> str:
    """Human words for a CPU amount: ``"0.5 CPU"``, ``"2 CPU"``, ``"0.25 CPU"``."""
    text = f"{cores:.3f}".rstrip("0").rstrip(".")
    return f"{text} CPU"


def format_memory(n: int) -> str:
    """Human words for a byte count in binary units: ``"512 MiB"``, ``"8 GiB"``, ``"1.5 GiB"``."""
    amount = float(n)
    unit = 0
    while amount >= 1024 and unit < len(_BINARY_UNITS) - 1:
        amount /= 1024
        unit += 1
    text = f"{amount:.2f}".rstrip("0").rstrip(".")
    return f"{text} {_BINARY_UNITS[unit]}"


def _cpu_quantity(cores: float) -> str:
    """A canonical Kubernetes quantity for ``cores``: ``"2"`` or ``"1500m"``."""
    millis = round(cores * 1000)
    if cores > 0 and millis == 0:
        millis = 1  # Kubernetes rounds CPU up to whole millicores
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def _memory_quantity(n: int) -> str:
    """A canonical Kubernetes quantity for ``n`` bytes: ``"8Gi"``, ``"512Mi"`` or bytes."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = int(_SUFFIXES[suffix])
        if n and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


# -- sizes and policy -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Size:
    """A named server size configured by the admin. Memory in bytes, CPU in cores."""

    name: str
    display_name: str
    description: str
    cpu_guarantee: float | None
    cpu_limit: float | None
    mem_guarantee: int | None
    mem_limit: int | None
    default: bool = False

    @classmethod
    def from_config(cls, d: dict) -> Size:
        """A size from the admin's config dict; ValueError naming the size and key if invalid.

        Keys: ``name`` (required), ``display_name``, ``description``, ``cpu_guarantee``,
        ``cpu_limit``, ``mem_guarantee``, ``mem_limit``, ``default``. CPU accepts ``"500m"``,
        ``"2"`` or numbers; memory accepts quantities (``"512Mi"``) or int bytes.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"a size must be a dict, got {_type_name(d)}")
        name = d.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"size {_show(name)}: 'name' must be a non-empty string")
        unknown = sorted(str(k) for k in d if k not in _SIZE_KEYS)
        if unknown:
            raise ValueError(
                f"size {name!r}: unknown key(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(sorted(_SIZE_KEYS))}"
            )
        display_name = d.get("display_name") or name
        description = d.get("description") or ""
        for key, text in (("display_name", display_name), ("description", description)):
            if not isinstance(text, str):
                raise ValueError(f"size {name!r}: {key!r} must be a string")
        default = d.get("default", False)
        if not isinstance(default, bool):
            raise ValueError(f"size {name!r}: 'default' must be true or false")

        def get(key: str, parse):
            value = d.get(key)
            if value is None:
                return None
            try:
                return parse(value)
            except ValueError as e:
                raise ValueError(f"size {name!r}: {key!r}: {e}") from None

        cpu_guarantee, cpu_limit = get("cpu_guarantee", parse_cpu), get("cpu_limit", parse_cpu)
        mem_guarantee, mem_limit = (
            get("mem_guarantee", parse_memory),
            get("mem_limit", parse_memory),
        )
        if cpu_guarantee is not None and cpu_limit is not None and cpu_guarantee > cpu_limit:
            raise ValueError(f"size {name!r}: 'cpu_guarantee' is greater than 'cpu_limit'")
        if mem_guarantee is not None and mem_limit is not None and mem_guarantee > mem_limit:
            raise ValueError(f"size {name!r}: 'mem_guarantee' is greater than 'mem_limit'")
        return cls(
            name=name,
            display_name=display_name,
            description=description,
            cpu_guarantee=cpu_guarantee,
            cpu_limit=cpu_limit,
            mem_guarantee=mem_guarantee,
            mem_limit=mem_limit,
            default=default,
        )


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
    unknown = sorted(str(k) for k in policy if k not in _POLICY_KEYS)
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(_POLICY_KEYS))}"
        )
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
    try:
        cpu_bound = None if max_cpu is None else parse_cpu(max_cpu)
        memory_bound = None if max_memory is None else parse_memory(max_memory)
    except ValueError as e:
        raise ValueError(f"max_cpu/max_memory: {e}") from None
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
        reserved_env_names=DEFAULT_RESERVED_ENV_NAMES | frozenset(extra_names),
        reserved_env_prefixes=prefixes,
        max_env_vars=max_env_vars,
        max_env_value_bytes=max_env_value_bytes,
        configured_sizes=tuple(names),
    )


def _strings(values: Iterable[str], label: str) -> list[str]:
    if isinstance(values, str):
        raise ValueError(f"{label} must be a list of strings, not a string")
    out = list(values)
    if not all(isinstance(v, str) and v for v in out):
        raise ValueError(f"{label} must be a list of non-empty strings")
    return out


# -- validated options ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpawnOptions:
    """The validated choice of one spawn. ``secret_env`` values must never be logged or saved."""

    image: NotebookImage
    tag: ImageTag
    size: Size
    cpu: float | None
    memory: int | None
    gpus: int
    env: dict[str, str]
    secret_env: dict[str, str]

    @property
    def image_ref(self) -> str:
        """The digest-pinned image reference to run."""
        assert self.tag.image_ref is not None  # validate() only accepts ready tags
        return self.tag.image_ref

    def to_user_options(self, default_namespace: str) -> dict:
        """The canonical JSON-safe options to save: secret values are left out, only names kept.

        :func:`validate` accepts the result again (it ignores ``secret_env_names``).
        """
        options: dict[str, Any] = {
            "image": format_image_ref(self.image, self.tag, default_namespace),
            "size": self.size.name,
            "gpus": self.gpus,
            "env": dict(self.env),
            "secret_env_names": sorted(self.secret_env),
        }
        if self.cpu is not None:
            options["cpu"] = _cpu_quantity(self.cpu)
        if self.memory is not None:
            options["memory"] = _memory_quantity(self.memory)
        return options

    def __repr__(self) -> str:
        # Never show secret values, even in a traceback or a debug log.
        return (
            f"SpawnOptions(image={self.image.key!r}, tag={self.tag.name!r}, "
            f"size={self.size.name!r}, cpu={self.cpu!r}, memory={self.memory!r}, "
            f"gpus={self.gpus!r}, env={self.env!r}, secret_env_names={sorted(self.secret_env)!r})"
        )


# -- form data --------------------------------------------------------------------------------


def _form_values(key: str, raw: Any) -> list[str]:
    """The values of one form field as a list of str (tolerating bytes and a bare str)."""
    values = list(raw) if isinstance(raw, list | tuple) else [raw]
    out = []
    for value in values:
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise OptionsError(key, "is not valid UTF-8") from None
        if not isinstance(value, str):
            raise OptionsError(key, f"form values must be text, got {_type_name(value)}")
        out.append(value)
    return out


def options_from_form(form_data: dict[str, list[str]]) -> dict:
    """JupyterHub form or query data (every value a list of str) -> raw user_options.

    ``image``, ``size``, ``cpu``, ``memory`` and ``gpus`` are single values (surrounding spaces
    stripped; an empty ``cpu``/``memory``/``gpus`` means "not given"; a digit-only ``gpus``
    becomes an int; a field given twice stays a list, which :func:`validate` rejects).
    Repeated ``env_name``/``env_value`` and ``secret_env_name``/``secret_env_value`` pairs
    become dicts; rows whose name and value are both empty are ignored. ``_xsrf`` is dropped and
    any other key is passed through for :func:`validate` to reject. Raises only OptionsError.
    """
    if not isinstance(form_data, Mapping):
        raise OptionsError(
            "user_options", f"form data must be a mapping, got {_type_name(form_data)}"
        )
    data = {key: _form_values(str(key), raw) for key, raw in form_data.items()}
    options: dict[str, Any] = {}
    for field in _SINGLE_FORM_FIELDS:
        values = [v.strip() for v in data.pop(field, [])]
        if field in _OPTIONAL_WHEN_EMPTY:
            values = [v for v in values if v]
        if not values:
            continue
        if len(values) > 1:
            options[field] = values
            continue
        value: Any = values[0]
        if field == "gpus" and re.fullmatch(r"[0-9]{1,9}", value, re.ASCII):
            value = int(value)
        options[field] = value
    for field, name_key, value_key in _FORM_PAIRS:
        names, values = data.pop(name_key, []), data.pop(value_key, [])
        if len(names) != len(values):
            raise OptionsError(
                field, f"{len(names)} {name_key} but {len(values)} {value_key} fields were given"
            )
        pairs: dict[str, str] = {}
        for name, value in zip(names, values, strict=True):
            name = name.strip()
            if not name and not value:
                continue
            if name in pairs:
                raise OptionsError(field, f"duplicate name {_show(name)}")
            pairs[name] = value
        if pairs:
            options[field] = pairs
    for key, values in data.items():
        if key not in _FORM_DROPPED:
            options[key] = values[0] if len(values) == 1 else values
    return options


# -- validation -------------------------------------------------------------------------------


def validate(
    user_options: object, catalog: Catalog, policy: Policy, default_namespace: str
) -> SpawnOptions:
    """Check user_options from the REST API, the form or the query against catalog and policy.

    The single code path for every source of options. Missing keys take their defaults (the
    default image the user may use, the default size, 0 GPUs, no env). Raises
    :class:`OptionsError` naming the field for every problem, and nothing else.
    """
    if not isinstance(user_options, dict):
        raise OptionsError("user_options", f"must be a JSON object, got {_type_name(user_options)}")
    unknown = sorted(
        (k for k in user_options if k not in KNOWN_KEYS and k not in STORED_ONLY_KEYS), key=str
    )
    if unknown:
        field = unknown[0] if isinstance(unknown[0], str) else repr(unknown[0])
        if len(field) > 60:
            field = field[:57] + "..."
        raise OptionsError(field, f"unknown option; allowed: {', '.join(sorted(KNOWN_KEYS))}")
    names = user_options.get("secret_env_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise OptionsError("secret_env_names", "must be a list of names")

    image, tag = _validate_image(user_options, catalog, policy, default_namespace)
    size = _validate_size(user_options, policy)
    cpu = memory = None
    if "cpu" in user_options or "memory" in user_options:
        cpu, memory = _validate_custom(user_options, policy)
    gpus = _validate_gpus(user_options, policy)
    env, secret_env = _validate_env(user_options, policy)
    return SpawnOptions(
        image=image,
        tag=tag,
        size=size,
        cpu=cpu,
        memory=memory,
        gpus=gpus,
        env=env,
        secret_env=secret_env,
    )


def _usable(image: NotebookImage, tag: ImageTag, policy: Policy) -> bool:
    return (
        not image.hidden
        and policy.allows_image(image)
        and tag.ready
        and not tag.outdated
        and bool(tag.image_ref)
    )


def _default_image(catalog: Catalog, policy: Policy) -> tuple[NotebookImage, ImageTag]:
    """The catalog's default choice, restricted to the images the policy allows."""
    choice = catalog.default_choice()
    if choice is not None and _usable(*choice, policy):
        return choice
    for wanted in (lambda t: t.default, lambda t: t.recommended, lambda t: True):
        for image in catalog.visible():
            for tag in image.offered_tags():
                if wanted(tag) and _usable(image, tag, policy):
                    return image, tag
    raise OptionsError("image", "no image is available")


def _validate_image(
    options: dict, catalog: Catalog, policy: Policy, default_namespace: str
) -> tuple[NotebookImage, ImageTag]:
    if "image" not in options:
        return _default_image(catalog, policy)
    ref = options["image"]
    if not isinstance(ref, str):
        raise OptionsError(
            "image",
            f"must be a string like 'stream:tag' or 'namespace/stream:tag', got {_type_name(ref)}",
        )
    try:
        namespace, stream, tag_name = parse_image_ref(ref, default_namespace)
    except ImageRefError as e:
        raise OptionsError("image", str(e)) from None
    except ValueError as e:  # defensive: any other parse problem is still the user's input
        raise OptionsError("image", f"{_show(ref)} is not a valid image reference ({e})") from None
    shown = _show(ref)
    image = catalog.get(namespace, stream)
    if image is None:
        raise OptionsError("image", f"{shown}: no image {namespace}/{stream} in the catalog")
    if image.hidden:
        raise OptionsError("image", f"{shown}: image {image.key} is hidden and not offered")
    if not policy.allows_image(image):
        raise OptionsError("image", f"{shown}: image {image.key} is not allowed for you")
    tag = image.tag(tag_name)
    if tag is None:
        offered = ", ".join(t.name for t in image.offered_tags()) or "none"
        raise OptionsError(
            "image", f"{shown}: image {image.key} has no tag {tag_name!r} (tags: {offered})"
        )
    if tag.outdated:
        raise OptionsError("image", f"{shown} is outdated and not offered for new servers")
    if not tag.ready or not tag.image_ref:
        phase = getattr(tag.phase, "value", str(tag.phase))
        detail = f": {tag.message}" if tag.message else ""
        raise OptionsError("image", f"{shown} is {phase}, not ready{detail}")
    return image, tag


def _validate_size(options: dict, policy: Policy) -> Size:
    allowed = ", ".join(s.name for s in policy.sizes) or "none"
    if "size" not in options:
        size = policy.default_size()
        if size is None:
            raise OptionsError("size", "no size is available for you")
        return size
    name = options["size"]
    if not isinstance(name, str):
        raise OptionsError(
            "size", f"must be a size name (one of: {allowed}), got {_type_name(name)}"
        )
    size = policy.size(name)
    if size is not None:
        return size
    if name in policy.configured_sizes:
        raise OptionsError("size", f"{_show(name)} is not allowed for you; allowed: {allowed}")
    raise OptionsError("size", f"{_show(name)} is not a configured size; allowed: {allowed}")


def _validate_custom(options: dict, policy: Policy) -> tuple[float | None, int | None]:
    cpu = memory = None
    if "cpu" in options:
        if not policy.allow_custom_resources:
            raise OptionsError("cpu", "custom resources are not enabled")
        value = options["cpu"]
        hint = "a number of cores like '2', '1.5' or '500m'"
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise OptionsError("cpu", f"must be {hint}, got {_type_name(value)}")
        try:
            cpu = parse_cpu(value)
        except ValueError:
            raise OptionsError("cpu", f"must be {hint}, got {_show(value)}") from None
        if cpu <= 0:
            raise OptionsError("cpu", f"must be greater than 0, got {_show(value)}")
        if policy.max_cpu is not None and cpu > policy.max_cpu:
            raise OptionsError(
                "cpu", f"must be at most {format_cpu(policy.max_cpu)}, got {_show(value)}"
            )
    if "memory" in options:
        if not policy.allow_custom_resources:
            raise OptionsError("memory", "custom resources are not enabled")
        value = options["memory"]
        hint = "a quantity like '512Mi' or '8Gi', or an integer number of bytes"
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise OptionsError("memory", f"must be {hint}, got {_type_name(value)}")
        try:
            memory = parse_memory(value)
        except ValueError:
            raise OptionsError("memory", f"must be {hint}, got {_show(value)}") from None
        if memory <= 0:
            raise OptionsError("memory", f"must be greater than 0, got {_show(value)}")
        if policy.max_memory is not None and memory > policy.max_memory:
            raise OptionsError(
                "memory",
                f"must be at most {format_memory(policy.max_memory)}, got {_show(value)}",
            )
    return cpu, memory


def _validate_gpus(options: dict, policy: Policy) -> int:
    if "gpus" not in options:
        return 0
    value = options["gpus"]
    if type(value) is not int or not 0 <= value <= policy.max_gpus:
        raise OptionsError(
            "gpus", f"must be an integer from 0 to {policy.max_gpus}, got {_show(value)}"
        )
    return value


def _validate_env(options: dict, policy: Policy) -> tuple[dict[str, str], dict[str, str]]:
    maps: dict[str, dict[str, str]] = {}
    for field in ("env", "secret_env"):
        value = options.get(field, {})
        if not isinstance(value, dict):
            raise OptionsError(
                field, f"must be an object mapping names to string values, got {_type_name(value)}"
            )
        maps[field] = value
    env, secret_env = maps["env"], maps["secret_env"]
    total = len(env) + len(secret_env)
    if total > policy.max_env_vars:
        raise OptionsError(
            "env",
            f"too many variables: {total} in env and secret_env, at most {policy.max_env_vars}",
        )
    for field, values in maps.items():
        for name, value in values.items():
            _check_env_var(field, name, value, policy)
    for name in secret_env:
        if name in env:
            raise OptionsError(f"secret_env.{name}", "is also set in env; use one or the other")
    return dict(env), dict(secret_env)


def _check_env_var(field: str, name: Any, value: Any, policy: Policy) -> None:
    if not isinstance(name, str):
        raise OptionsError(field, f"variable names must be strings, got {_show(name)}")
    if len(name) > MAX_ENV_NAME_LENGTH:
        raise OptionsError(
            field, f"variable name {_show(name)} is longer than {MAX_ENV_NAME_LENGTH} characters"
        )
    if not ENV_NAME_RE.fullmatch(name):
        raise OptionsError(
            field,
            f"invalid variable name {_show(name)}: use letters, digits and _, "
            f"not starting with a digit",
        )
    where = f"{field}.{name}"
    if policy.env_name_reserved(name):
        raise OptionsError(where, "is a reserved name")
    if not isinstance(value, str):
        raise OptionsError(where, f"value must be a string, got {_type_name(value)}")
    limit = policy.max_env_value_bytes
    if "\x00" in value:
        raise OptionsError(where, "value must not contain NUL characters")
    try:
        size = len(value.encode("utf-8")) if len(value) <= limit else len(value)
    except UnicodeEncodeError:
        raise OptionsError(where, "value is not valid Unicode text") from None
    if size > limit:
        raise OptionsError(where, f"value is longer than {limit} bytes (UTF-8)")
