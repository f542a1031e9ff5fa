"""The one error type of user_options, and how user input is shown inside messages."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any


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


def show(value: Any, limit: int = 60) -> str:
    """``repr`` of user input, shortened so error messages stay readable."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def type_name(value: Any) -> str:
    """What kind of JSON value ``value`` is, in words (``"a list"``, ``"null"``)."""
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


def refuse_unknown_keys(where: str, config: Mapping, allowed: Collection[str]) -> None:
    """ValueError naming the keys of an admin's ``config`` dict that are not ``allowed``."""
    unknown = sorted(str(k) for k in config if k not in allowed)
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
