"""HTML form and ``/hub/spawn?…`` query data reshaped into raw user_options (not validated).

Our form's field names and KubeSpawner's (``profile``, ``profile-option-<size>--<option>``)
are both understood, so a form or script written for KubeSpawner keeps working.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .errors import OptionsError
from .errors import show as _show
from .errors import type_name as _type_name
from .sizes import UNLISTED_SUFFIX

#: The fields a ``/hub/spawn?…`` link may carry: a link shares a choice, never env vars.
LINK_FIELDS = ("image", "size", "cpu", "memory", "gpus")

_SINGLE_FORM_FIELDS = (*LINK_FIELDS, "profile")
_OPTIONAL_WHEN_EMPTY = frozenset({"cpu", "memory", "gpus"})
_FORM_PAIRS = (
    ("env", "env_name", "env_value"),
    ("secret_env", "secret_env_name", "secret_env_value"),
)
_FORM_DROPPED = frozenset({"_xsrf", "_replace_running"})
_PROFILE_OPTION = "profile-option-"


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
    become dicts; rows whose name and value are both empty are ignored. The chosen size's
    ``profile-option-<size>--<option>`` selects (and ``…--<option>--unlisted-choice`` boxes)
    count, the other sizes' are dropped: with KubeSpawner's ``profile`` the result has
    KubeSpawner's flat shape ``{"profile": slug, "<option>": choice}`` (an option named like
    one of our fields, e.g. ``image``, takes its place); with ``size`` they become
    ``size_options``.
    ``_xsrf`` is dropped and any other key is passed through for :func:`validate` to reject.
    Raises only OptionsError.
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
    size = options.get("size", options.get("profile"))
    chosen: dict[str, str] = {}
    for key in [k for k in data if k.startswith(_PROFILE_OPTION)]:
        values = data.pop(key)
        prefix = f"{_PROFILE_OPTION}{size}--"
        if not isinstance(size, str) or not key.startswith(prefix) or key == prefix:
            continue  # the form posts every size's selects: only the chosen size's count
        option = key[len(prefix) :]
        if len(values) != 1:
            raise OptionsError(option, "was given more than once")
        value = values[0].strip()
        if value or not option.endswith(UNLISTED_SUFFIX):  # an empty "Other" box is not a value
            chosen[option] = value
    if chosen and "size" in options:
        options["size_options"] = chosen
    elif chosen:
        # KubeSpawner's flat shape: {"profile": slug, "<option>": choice}.
        options.update(chosen)
    for key, values in data.items():
        if key not in _FORM_DROPPED:
            options[key] = values[0] if len(values) == 1 else values
    return options
