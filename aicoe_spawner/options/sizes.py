"""Sizes: what the admin offers, with the pod settings each size overrides.

A size is CPU and memory plus, like a KubeSpawner profile, ``kubespawner_override`` (node
selector, tolerations, extra resource limits, volumes, labels, its own ``image``, …) and
``profile_options`` whose choices (or an ``unlisted_choice`` the user types, checked by the
admin's regex) override more. Memory is read as KubeSpawner reads it (``"2G"`` is 2 GiB).
An existing KubeSpawner ``profile_list`` is read as sizes by
:func:`sizes_from_profile_list`. Everything here is checked when the hub starts: an unknown or
unsafe key is a ValueError that names the size or profile, the key, and what to write instead.
Pure code: no Kubernetes client, no tornado, no traitlets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from slugify import slugify

from .errors import refuse_unknown_keys
from .errors import show as _show
from .errors import type_name as _type_name
from .quantities import parse_byte_specification, parse_cpu

__all__ = [
    "OVERRIDE_KEYS",
    "Choice",
    "Size",
    "SizeOption",
    "UnlistedChoice",
    "check_overrides",
    "sizes_from_profile_list",
]

#: KubeSpawner settings a size (or one of its choices) may override: where and how the pod
#: runs. Each applies to one spawn only; the next spawn starts from the configured values.
OVERRIDE_KEYS = frozenset(
    {
        # scheduling
        "node_selector",
        "tolerations",
        "node_affinity_required",
        "node_affinity_preferred",
        "pod_affinity_required",
        "pod_affinity_preferred",
        "pod_anti_affinity_required",
        "pod_anti_affinity_preferred",
        "priority_class_name",
        "scheduler_name",
        # resources
        "cpu_guarantee",
        "cpu_limit",
        "mem_guarantee",
        "mem_limit",
        "extra_resource_guarantees",
        "extra_resource_limits",
        # storage
        "volumes",
        "volume_mounts",
        # metadata
        "extra_labels",
        "extra_annotations",
        # pod and container
        "extra_pod_config",
        "extra_container_config",
        "extra_containers",
        "init_containers",
        "lifecycle_hooks",
        "container_security_context",
        "pod_security_context",
        "uid",
        "gid",
        "fs_gid",
        "supplemental_gids",
        "service_account",
        "automount_service_account_token",
        "environment",
        "default_url",
        "cmd",
        "args",
        "working_dir",
        "image_pull_policy",
        "image_pull_secrets",
        "start_timeout",
        "http_timeout",
    }
)
_RESOURCE_KEYS = ("cpu_guarantee", "cpu_limit", "mem_guarantee", "mem_limit")

#: The size's (or choice's) own image: started instead of the user's catalog choice.
IMAGE_KEY = "image"

# Settings a size must not change, and what to do instead.
_REFUSED = {
    "image_spec": "KubeSpawner 7 has no 'image_spec': write 'image'",
}
for _key in (
    "namespace",
    "enable_user_namespaces",
    "user_namespace_template",
    "pod_name_template",
    "pvc_name_template",
    "secret_name_template",
    "dns_name_template",
    "storage_pvc_ensure",
    "storage_capacity",
    "storage_class",
):
    _REFUSED[_key] = (
        "names, namespaces and storage must stay the same for every spawn of a server: "
        f"set c.KubeSpawner.{_key} for all servers instead"
    )
for _key in ("profile_list", "options_form", "options_from_form", "apply_user_options"):
    _REFUSED[_key] = "the options form and user_options are AICoESpawner's: remove it"
for _key in ("pre_spawn_hook", "modify_pod_hook", "post_stop_hook", "auth_state_hook"):
    _REFUSED[_key] = (
        f"hooks are hub-wide: set c.KubeSpawner.{_key} and look at "
        "spawner.user_options['size'] inside it"
    )

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
        "kubespawner_override",
        "profile_options",
    }
)
_PROFILE_KEYS = frozenset(
    {"display_name", "slug", "description", "default", "kubespawner_override", "profile_options"}
)
_OPTION_KEYS = frozenset({"display_name", "choices", "unlisted_choice"})
_CHOICE_KEYS = frozenset({"display_name", "default", "kubespawner_override"})
_UNLISTED_KEYS = frozenset(
    {
        "enabled",
        "display_name",
        "display_name_in_choices",
        "validation_regex",
        "validation_message",
        "kubespawner_override",
    }
)
#: What KubeSpawner's form posts as the select's value when the user types a value instead.
UNLISTED_MARKER = "unlisted-choice"
#: Suffix of the key that carries a typed value: ``{"<option>--unlisted-choice": "text"}``.
UNLISTED_SUFFIX = "--unlisted-choice"
MAX_UNLISTED_LENGTH = 512
_UNSAFE_TEXT = re.compile(r"[\x00-\x1f\x7f{}]")


def check_overrides(where: str, overrides: Any) -> dict[str, Any]:
    """``overrides`` as a dict whose keys a size may set; ValueError naming ``where`` and the
    key, saying what to write instead. Values are checked by the spawner against its traits."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise ValueError(
            f"{where}: 'kubespawner_override' must be a dict, got {_type_name(overrides)}"
        )
    for key in overrides:
        if not isinstance(key, str):
            raise ValueError(
                f"{where}: kubespawner_override keys must be strings, got {_show(key)}"
            )
        if key in _REFUSED:
            raise ValueError(
                f"{where}: kubespawner_override {key!r} cannot be used: {_REFUSED[key]}"
            )
        if key not in OVERRIDE_KEYS and key != IMAGE_KEY:
            raise ValueError(
                f"{where}: kubespawner_override {key!r} is not a setting a size can override; "
                f"allowed: {', '.join(sorted(OVERRIDE_KEYS))}"
            )
    return dict(overrides)


def _own_image(where: str, overrides: dict[str, Any]) -> str | None:
    """The ``image`` of ``overrides``, taken out of them (it is started pinned, not set as is)."""
    if IMAGE_KEY not in overrides:
        return None
    image = overrides.pop(IMAGE_KEY)
    if not isinstance(image, str) or not image.strip():
        raise ValueError(f"{where}: kubespawner_override 'image' must be a non-empty string")
    return image.strip()


class _KeepOthers(dict):
    """``str.format_map`` mapping that leaves every placeholder but ``{value}`` as written."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _format_template(value: Any, text: str) -> Any:
    """KubeSpawner's ``{value}`` substitution, in every string (keys too) of nested dicts,
    lists and sets; other ``{…}`` placeholders stay as written, ``{{``/``}}`` become braces."""
    if isinstance(value, str):
        return value.format_map(_KeepOthers(value=text))
    if isinstance(value, dict):
        return {_format_template(k, text): _format_template(v, text) for k, v in value.items()}
    if isinstance(value, list):
        return [_format_template(v, text) for v in value]
    if isinstance(value, set):
        return {_format_template(v, text) for v in value}
    return value


@dataclass(frozen=True, slots=True)
class Choice:
    """One choice of a size option, with the settings it overrides and maybe its own image.
    A value the user typed (``unlisted``) is a choice named by that value."""

    name: str
    display_name: str
    default: bool = False
    overrides: dict[str, Any] = field(default_factory=dict, compare=False)
    image: str | None = None
    unlisted: bool = False


@dataclass(frozen=True, slots=True)
class UnlistedChoice:
    """KubeSpawner's ``unlisted_choice``: a value the user types, matched against the admin's
    regex, put into the ``{value}`` of its overrides."""

    display_name: str
    display_name_in_choices: str
    validation_regex: str | None
    validation_message: str
    overrides: dict[str, Any] = field(default_factory=dict, compare=False)

    def check(self, text: str) -> str | None:
        """Why ``text`` is refused (None: accepted). The regex is matched at the start, as
        KubeSpawner does; control characters and braces are always refused (user text must
        not reach KubeSpawner's ``{username}`` expansion)."""
        if not text:
            return "type a value"
        if len(text) > MAX_UNLISTED_LENGTH:
            return f"must be at most {MAX_UNLISTED_LENGTH} characters"
        if _UNSAFE_TEXT.search(text):
            return "must not contain control characters, '{' or '}'"
        if self.validation_regex is not None and not re.match(self.validation_regex, text):
            hint = self.validation_message or f"must match {self.validation_regex}"
            return f"{hint} (got {_show(text)})"
        return None

    def choice(self, text: str) -> Choice:
        """The choice ``text`` makes (call :meth:`check` first)."""
        overrides = _format_template(self.overrides, text)
        image = overrides.pop(IMAGE_KEY, None)
        return Choice(
            name=text,
            display_name=text,
            overrides=overrides,
            image=image.strip() if isinstance(image, str) and image.strip() else None,
            unlisted=True,
        )


def _unlisted(where: str, config: Any) -> UnlistedChoice | None:
    if config is None:
        return None
    here = f"{where}: unlisted_choice"
    if not isinstance(config, Mapping):
        raise ValueError(f"{here} must be a dict, got {_type_name(config)}")
    refuse_unknown_keys(here, config, _UNLISTED_KEYS)
    if not config.get("enabled", False):
        return None
    texts = ("display_name", "display_name_in_choices", "validation_regex", "validation_message")
    for key in texts:
        if config.get(key) is not None and not isinstance(config[key], str):
            raise ValueError(f"{here}: {key!r} must be a string")
    regex = config.get("validation_regex") or None
    if regex is not None:
        try:
            re.compile(regex)
        except re.error as e:
            raise ValueError(f"{here}: 'validation_regex' {regex!r} is not a regex: {e}") from None
    overrides = check_overrides(here, config.get("kubespawner_override"))
    try:
        _format_template(overrides, "x")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"{here}: kubespawner_override strings must be templates like 'x:{{value}}' "
            f"(write {{{{ and }}}} for literal braces): {e}"
        ) from None
    image = overrides.get(IMAGE_KEY)
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise ValueError(f"{here}: kubespawner_override 'image' must be a non-empty string")
    return UnlistedChoice(
        display_name=str(config.get("display_name") or "Other"),
        display_name_in_choices=str(config.get("display_name_in_choices") or "Other..."),
        validation_regex=regex,
        validation_message=str(config.get("validation_message") or ""),
        overrides=overrides,
    )


@dataclass(frozen=True, slots=True)
class SizeOption:
    """A select on a size (KubeSpawner's ``profile_options``): one of its choices applies."""

    name: str
    display_name: str
    choices: tuple[Choice, ...]
    unlisted: UnlistedChoice | None = None

    def choice(self, name: str) -> Choice | None:
        return next((c for c in self.choices if c.name == name), None)

    def default_choice(self) -> Choice | None:
        """The default choice; None when the option has only an unlisted choice."""
        first = self.choices[0] if self.choices else None
        return next((c for c in self.choices if c.default), first)


def _size_options(where: str, options: Any) -> tuple[SizeOption, ...]:
    if options is None:
        return ()
    if not isinstance(options, Mapping):
        raise ValueError(f"{where}: 'profile_options' must be a dict, got {_type_name(options)}")
    out = []
    for name, option in options.items():
        here = f"{where}: profile_options {name!r}"
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: profile_options names must be non-empty strings")
        if not isinstance(option, Mapping):
            raise ValueError(f"{here} must be a dict")
        refuse_unknown_keys(here, option, _OPTION_KEYS)
        unlisted = _unlisted(here, option.get("unlisted_choice"))
        choices_config = option.get("choices")
        if choices_config is None and unlisted is not None:
            choices_config = {}
        if not isinstance(choices_config, Mapping) or not (choices_config or unlisted):
            raise ValueError(f"{here}: 'choices' must be a non-empty dict of choices")
        choices = []
        for slug, choice in choices_config.items():
            there = f"{here}: choice {slug!r}"
            if not isinstance(choice, Mapping):
                raise ValueError(f"{there} must be a dict")
            refuse_unknown_keys(there, choice, _CHOICE_KEYS)
            overrides = check_overrides(there, choice.get("kubespawner_override"))
            choices.append(
                Choice(
                    name=str(slug),
                    display_name=str(choice.get("display_name") or slug),
                    default=bool(choice.get("default", False)),
                    overrides=overrides,
                    image=_own_image(there, overrides),
                )
            )
        if name.endswith(UNLISTED_SUFFIX):
            raise ValueError(f"{here}: an option name must not end in {UNLISTED_SUFFIX!r}")
        out.append(
            SizeOption(
                name=name,
                display_name=str(option.get("display_name") or name),
                choices=tuple(choices),
                unlisted=unlisted,
            )
        )
    return tuple(out)


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
    overrides: dict[str, Any] = field(default_factory=dict, compare=False)
    options: tuple[SizeOption, ...] = ()
    #: The size's own image (``kubespawner_override.image``), started instead of the catalog's.
    image: str | None = None
    #: Read from KubeSpawner's ``profile_list`` (saved options then name it ``profile`` too).
    profile: bool = False

    def option(self, name: str) -> SizeOption | None:
        return next((o for o in self.options if o.name == name), None)

    @property
    def brings_image(self) -> bool:
        """Whether the size, or any of its options, can start an image of its own."""
        return (
            self.image is not None
            or any(c.image is not None for o in self.options for c in o.choices)
            or any(
                o.unlisted is not None and IMAGE_KEY in o.unlisted.overrides for o in self.options
            )
        )

    @classmethod
    def from_config(cls, d: dict, where: str | None = None) -> Size:
        """A size from the admin's config dict; ValueError naming the size and key if invalid.

        Keys: ``name`` (required), ``display_name``, ``description``, ``cpu_guarantee``,
        ``cpu_limit``, ``mem_guarantee``, ``mem_limit``, ``default``, ``kubespawner_override``
        and ``profile_options`` (as in KubeSpawner's profile_list). CPU accepts ``"500m"``,
        ``"2"`` or numbers; memory accepts quantities (``"512Mi"``) or int bytes.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"a size must be a dict, got {_type_name(d)}")
        name = d.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"size {_show(name)}: 'name' must be a non-empty string")
        where = where or f"size {name!r}"
        refuse_unknown_keys(where, d, _SIZE_KEYS)
        display_name = d.get("display_name") or name
        description = d.get("description") or ""
        for key, text in (("display_name", display_name), ("description", description)):
            if not isinstance(text, str):
                raise ValueError(f"{where}: {key!r} must be a string")
        default = d.get("default", False)
        if not isinstance(default, bool):
            raise ValueError(f"{where}: 'default' must be true or false")
        overrides = check_overrides(where, d.get("kubespawner_override"))
        image = _own_image(where, overrides)
        # CPU and memory in the overrides are the size's own resources.
        resources = {k: d.get(k) for k in _RESOURCE_KEYS}
        for key in _RESOURCE_KEYS:
            if key in overrides and not callable(overrides[key]):
                if resources[key] is not None:
                    raise ValueError(
                        f"{where}: {key!r} is set twice (also in kubespawner_override); keep one"
                    )
                resources[key] = overrides.pop(key)

        def get(key: str, parse):
            value = resources[key]
            if value is None:
                return None
            try:
                return parse(value)
            except ValueError as e:
                raise ValueError(f"{where}: {key!r}: {e}") from None

        cpu_guarantee, cpu_limit = get("cpu_guarantee", parse_cpu), get("cpu_limit", parse_cpu)
        mem_guarantee, mem_limit = (
            get("mem_guarantee", parse_byte_specification),
            get("mem_limit", parse_byte_specification),
        )
        if cpu_guarantee is not None and cpu_limit is not None and cpu_guarantee > cpu_limit:
            raise ValueError(f"{where}: 'cpu_guarantee' is greater than 'cpu_limit'")
        if mem_guarantee is not None and mem_limit is not None and mem_guarantee > mem_limit:
            raise ValueError(f"{where}: 'mem_guarantee' is greater than 'mem_limit'")
        return cls(
            name=name,
            display_name=display_name,
            description=description,
            cpu_guarantee=cpu_guarantee,
            cpu_limit=cpu_limit,
            mem_guarantee=mem_guarantee,
            mem_limit=mem_limit,
            default=default,
            overrides=overrides,
            options=_size_options(where, d.get("profile_options")),
            image=image,
        )


def sizes_from_profile_list(profile_list: Any) -> list[Size]:
    """KubeSpawner's ``profile_list`` (z2jh ``singleuser.profileList``) read as sizes.

    A profile's ``slug`` (else its display name, slugified as KubeSpawner does) is the size
    name; display name, description, default, ``kubespawner_override`` and ``profile_options``
    carry over. Anything that cannot be honoured is a ValueError naming the profile and the
    setting and saying what to write instead.
    """
    if callable(profile_list):
        raise ValueError(
            "profile_list is a callable: AICoESpawner needs its sizes when the hub starts. "
            "Write the list itself (c.KubeSpawner.profile_list = [...]) or "
            "c.AICoESpawner.sizes = [...] (docs/configuration.md)"
        )
    if isinstance(profile_list, Mapping):
        # KubeSpawner accepts a dict of profiles, sorted by key.
        profile_list = [profile_list[k] for k in sorted(profile_list)]
    if not isinstance(profile_list, list | tuple):
        raise ValueError(f"profile_list must be a list of profiles, got {_type_name(profile_list)}")
    sizes = []
    for i, profile in enumerate(profile_list):
        if not isinstance(profile, Mapping):
            raise ValueError(f"profile_list[{i}] must be a dict, got {_type_name(profile)}")
        display_name = profile.get("display_name")
        if not isinstance(display_name, str) or not display_name:
            raise ValueError(f"profile_list[{i}]: 'display_name' must be a non-empty string")
        slug = profile.get("slug") or slugify(display_name)
        where = f"profile_list: profile {display_name!r} (slug {slug!r})"
        unknown = sorted(str(k) for k in profile if k not in _PROFILE_KEYS)
        if unknown:
            raise ValueError(
                f"{where}: {', '.join(map(repr, unknown))} cannot be mapped to a size; "
                f"a profile may have: {', '.join(sorted(_PROFILE_KEYS))}"
            )
        config = {
            "name": slug,
            "display_name": display_name,
            "description": profile.get("description") or "",
            "default": bool(profile.get("default", False)),
            "kubespawner_override": profile.get("kubespawner_override") or {},
            "profile_options": profile.get("profile_options") or {},
        }
        sizes.append(replace(Size.from_config(config, where=where), profile=True))
    names = [s.name for s in sizes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"profile_list: duplicate slug(s) {', '.join(map(repr, duplicates))}")
    return sizes
