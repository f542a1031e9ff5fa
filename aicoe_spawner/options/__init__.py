"""User options: form data, query data and REST JSON turned into validated :class:`SpawnOptions`.

Pure code: no Kubernetes client, no tornado, no traitlets. The contract is DESIGN.md,
"user_options (form and REST API alike)". The one entry point for every source of options is
:func:`validate`; :func:`options_from_form` only reshapes HTML form / query data into the JSON
shape first. Every problem with user input is an :class:`OptionsError` whose message starts with
the offending field, so the spawner can turn it into an HTTP 400 as is.

By concern: ``errors`` (the error type), ``quantities`` (CPU and memory), ``sizes`` (sizes,
their overrides, profile_list), ``own_image`` (a size's own image pinned through the catalog),
``policy`` (what a user may choose), ``form`` (form and query
reshaping) and ``validation`` (checking against catalog and policy).
"""

from .errors import OptionsError
from .form import LINK_FIELDS, options_from_form
from .own_image import OwnImage, normalize_reference, resolve_own_image
from .policy import (
    DEFAULT_MIN_CPU,
    DEFAULT_MIN_MEMORY,
    DEFAULT_RESERVED_ENV_NAMES,
    DEFAULT_RESERVED_ENV_PREFIXES,
    ENV_NAME_RE,
    MAX_ENV_NAME_LENGTH,
    Policy,
    effective_policy,
    image_policy,
)
from .quantities import (
    cpu_quantity,
    format_cpu,
    format_memory,
    memory_quantity,
    parse_byte_specification,
    parse_cpu,
    parse_memory,
)
from .sizes import (
    OVERRIDE_KEYS,
    UNLISTED_MARKER,
    UNLISTED_SUFFIX,
    Choice,
    Size,
    SizeOption,
    UnlistedChoice,
    check_overrides,
    sizes_from_profile_list,
)
from .validation import ALIAS_KEYS, KNOWN_KEYS, STORED_ONLY_KEYS, SpawnOptions, validate

__all__ = [
    "ALIAS_KEYS",
    "DEFAULT_MIN_CPU",
    "DEFAULT_MIN_MEMORY",
    "DEFAULT_RESERVED_ENV_NAMES",
    "DEFAULT_RESERVED_ENV_PREFIXES",
    "ENV_NAME_RE",
    "KNOWN_KEYS",
    "LINK_FIELDS",
    "MAX_ENV_NAME_LENGTH",
    "OVERRIDE_KEYS",
    "STORED_ONLY_KEYS",
    "UNLISTED_MARKER",
    "UNLISTED_SUFFIX",
    "Choice",
    "OptionsError",
    "OwnImage",
    "Policy",
    "Size",
    "SizeOption",
    "SpawnOptions",
    "UnlistedChoice",
    "check_overrides",
    "cpu_quantity",
    "effective_policy",
    "format_cpu",
    "format_memory",
    "image_policy",
    "memory_quantity",
    "normalize_reference",
    "options_from_form",
    "parse_byte_specification",
    "parse_cpu",
    "parse_memory",
    "resolve_own_image",
    "sizes_from_profile_list",
    "validate",
]
