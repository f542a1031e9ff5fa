"""Validation: raw user_options checked against the live catalog and one user's policy.

The single code path for the HTML form, ``/hub/spawn?…`` links and the REST API: every problem
is an :class:`OptionsError` whose message starts with the offending field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aicoe_spawner.catalog import (
    Catalog,
    ImageRefError,
    ImageTag,
    NotebookImage,
    format_image_ref,
    parse_image_ref,
)

from .errors import OptionsError
from .errors import show as _show
from .errors import type_name as _type_name
from .own_image import OwnImage, resolve_own_image
from .policy import ENV_NAME_RE, MAX_ENV_NAME_LENGTH, Policy
from .quantities import (
    cpu_quantity,
    format_cpu,
    format_memory,
    memory_quantity,
    parse_cpu,
    parse_memory,
)
from .sizes import UNLISTED_MARKER, UNLISTED_SUFFIX, Choice, Size, SizeOption

KNOWN_KEYS = frozenset(
    {"image", "size", "size_options", "cpu", "memory", "gpus", "env", "secret_env"}
)
#: KubeSpawner's name for the size (``{"profile": "<slug>"}``), accepted as an alias.
ALIAS_KEYS = frozenset({"profile"})

#: Keys that :meth:`SpawnOptions.to_user_options` writes for JupyterHub's database. JupyterHub
#: reuses saved options for a spawn request that carries none, so :func:`validate` accepts them
#: (and ignores them) instead of rejecting the user's own saved options as unknown.
STORED_ONLY_KEYS = frozenset({"secret_env_names"})


@dataclass(frozen=True, slots=True)
class SpawnOptions:
    """The validated choice of one spawn. ``secret_env`` values must never be logged or saved.

    ``image``/``tag`` are the catalog choice; a size (or choice) that brings its own image
    has ``own_image`` instead and no catalog choice."""

    image: NotebookImage | None
    tag: ImageTag | None
    size: Size
    cpu: float | None
    memory: int | None
    gpus: int
    env: dict[str, str]
    secret_env: dict[str, str]
    #: The chosen choice of each of the size's options, in the size's order.
    choices: dict[str, Choice] = dataclasses.field(default_factory=dict)
    own_image: OwnImage | None = None

    @property
    def image_ref(self) -> str:
        """The image reference to run: the catalog's digest, or the size's own image."""
        if self.own_image is not None:
            return self.own_image.ref
        assert self.tag is not None and self.tag.image_ref is not None  # only ready tags
        return self.tag.image_ref

    def size_choices(self) -> dict[str, str]:
        """``{option: choice}``, and ``{option--unlisted-choice: text}`` for typed values."""
        return {
            f"{name}{UNLISTED_SUFFIX}" if c.unlisted else name: c.name
            for name, c in self.choices.items()
        }

    def to_user_options(self, default_namespace: str) -> dict:
        """The canonical JSON-safe options to save: secret values are left out, only names kept.

        :func:`validate` accepts the result again (it ignores ``secret_env_names``).
        """
        options: dict[str, Any] = {}
        if self.image is not None and self.tag is not None:
            options["image"] = format_image_ref(self.image, self.tag, default_namespace)
        if self.size.profile:
            options["profile"] = self.size.name  # as KubeSpawner's hooks read it
        options.update(
            {
                "size": self.size.name,
                "gpus": self.gpus,
                "env": dict(self.env),
                "secret_env_names": sorted(self.secret_env),
            }
        )
        if self.cpu is not None:
            options["cpu"] = cpu_quantity(self.cpu)
        if self.memory is not None:
            options["memory"] = memory_quantity(self.memory)
        if self.choices:
            options["size_options"] = self.size_choices()
        return options

    def __repr__(self) -> str:
        # Never show secret values, even in a traceback or a debug log.
        image = self.image.key if self.image is not None else None
        tag = self.tag.name if self.tag is not None else None
        own = self.own_image.requested if self.own_image is not None else None
        return (
            f"SpawnOptions(image={image!r}, tag={tag!r}, own_image={own!r}, "
            f"size={self.size.name!r}, cpu={self.cpu!r}, memory={self.memory!r}, "
            f"gpus={self.gpus!r}, env={self.env!r}, secret_env_names={sorted(self.secret_env)!r}, "
            f"size_options={self.size_choices()!r})"
        )


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
    user_options = _size_alias(user_options, policy)
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

    size = _validate_size(user_options, policy)
    choices = _validate_size_options(user_options, size)
    own_image = _own_image(size, choices, catalog, default_namespace)
    image = tag = None
    if own_image is None:
        # A size with its own image does not use the catalog choice (a form posts it anyway).
        image, tag = _validate_image(user_options, catalog, policy, default_namespace)
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
        choices=choices,
        own_image=own_image,
    )


def _own_image(
    size: Size, choices: dict[str, Choice], catalog: Catalog, default_namespace: str
) -> OwnImage | None:
    """The size's own image: the last of the size's and its chosen choices' images, in
    KubeSpawner's order (profile, then each option's choice)."""
    found = None
    if size.image is not None:
        found = (size.image, "profile", "size")
    for name, choice in choices.items():
        if choice.image is not None:
            field = f"size_options.{name}{UNLISTED_SUFFIX if choice.unlisted else ''}"
            found = (choice.image, "unlisted" if choice.unlisted else "profile", field)
    if found is None:
        return None
    return resolve_own_image(found[0], found[1], catalog, default_namespace, found[2])


def _size_alias(options: dict, policy: Policy) -> dict:
    """KubeSpawner's ``{"profile": "<slug>", "<option>": "<choice>"}`` in our shape."""
    if "profile" not in options:
        return options
    options = dict(options)
    profile = options.pop("profile")
    if "size" in options and options["size"] != profile:
        raise OptionsError("profile", f"{_show(profile)} and size {_show(options['size'])} differ")
    try:
        size = _validate_size({"size": profile}, policy)
    except OptionsError as e:
        raise OptionsError("profile", e.reason) from None
    options["size"] = profile
    if "size_options" not in options:
        # KubeSpawner's flat shape: the profile's option names win over ours ("image").
        flat = {}
        for option in size.options:
            for key in (option.name, f"{option.name}{UNLISTED_SUFFIX}"):
                if key in options:
                    flat[key] = options.pop(key)
        if flat:
            options["size_options"] = flat
    return options


def _validate_size_options(options: dict, size: Size) -> dict[str, Choice]:
    given = options.get("size_options", {})
    if not isinstance(given, dict):
        raise OptionsError(
            "size_options", f"must be an object mapping options to choices, got {_type_name(given)}"
        )
    for name in given:
        base = name.removesuffix(UNLISTED_SUFFIX) if isinstance(name, str) else name
        option = size.option(base) if isinstance(base, str) else None
        if option is None or (name != base and option.unlisted is None):
            offered = ", ".join(o.name for o in size.options) or "none"
            reason = f"size {size.name!r} has no option {_show(name)} (options: {offered})"
            if option is not None:
                reason = f"option {base!r} of size {size.name!r} takes no typed value"
            raise OptionsError(
                f"size_options.{name}" if isinstance(name, str) else "size_options", reason
            )
    chosen = {}
    for option in size.options:
        typed_key = f"{option.name}{UNLISTED_SUFFIX}"
        typed, value = given.get(typed_key), given.get(option.name)
        if option.unlisted is not None and (typed or value == UNLISTED_MARKER):
            chosen[option.name] = _typed_choice(option, typed, f"size_options.{typed_key}")
        elif value is None or value == "":
            default = option.default_choice()
            if default is None:  # only an unlisted choice: KubeSpawner has no default either
                raise OptionsError(
                    f"size_options.{typed_key}",
                    f"type a value ({option.unlisted.display_name}); the option has no choices",
                )
            chosen[option.name] = default
        else:
            choice = option.choice(value) if isinstance(value, str) else None
            if choice is None:
                names = ", ".join(c.name for c in option.choices)
                if option.unlisted is not None:
                    names += f", or a typed value as {typed_key}"
                raise OptionsError(
                    f"size_options.{option.name}", f"must be one of {names}, got {_show(value)}"
                )
            chosen[option.name] = choice
    return chosen


def _typed_choice(option: SizeOption, typed: Any, field: str) -> Choice:
    """The choice a value typed into an option's unlisted_choice makes, if its checks pass."""
    assert option.unlisted is not None
    if typed is None:
        typed = ""
    if not isinstance(typed, str):
        raise OptionsError(
            field, f"must be text ({option.unlisted.display_name}), got {_type_name(typed)}"
        )
    problem = option.unlisted.check(typed)
    if problem is not None:
        raise OptionsError(field, problem)
    return option.unlisted.choice(typed)


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
    cpu = _custom_quantity(
        options,
        policy,
        "cpu",
        "a number of cores like '2', '1.5' or '500m'",
        str | int | float,
        parse_cpu,
        format_cpu,
        policy.min_cpu,
        policy.max_cpu,
    )
    memory = _custom_quantity(
        options,
        policy,
        "memory",
        "a quantity like '512Mi' or '8Gi', or an integer number of bytes",
        str | int,
        parse_memory,
        format_memory,
        policy.min_memory,
        policy.max_memory,
    )
    return cpu, memory


def _custom_quantity(
    options: dict,
    policy: Policy,
    field: str,
    hint: str,
    types: Any,
    parse: Callable[[Any], Any],
    show_quantity: Callable[[Any], str],
    minimum: Any,
    maximum: Any,
) -> Any:
    """The custom ``cpu`` or ``memory`` value, parsed and within the policy's bounds; None
    when not given."""
    if field not in options:
        return None
    if not policy.allow_custom_resources:
        raise OptionsError(field, "custom resources are not enabled")
    value = options[field]
    if isinstance(value, bool) or not isinstance(value, types):
        raise OptionsError(field, f"must be {hint}, got {_type_name(value)}")
    try:
        quantity = parse(value)
    except ValueError:
        raise OptionsError(field, f"must be {hint}, got {_show(value)}") from None
    if quantity <= 0:
        raise OptionsError(field, f"must be greater than 0, got {_show(value)}")
    if quantity < minimum:
        raise OptionsError(field, f"must be at least {show_quantity(minimum)}, got {_show(value)}")
    if maximum is not None and quantity > maximum:
        raise OptionsError(field, f"must be at most {show_quantity(maximum)}, got {_show(value)}")
    return quantity


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
