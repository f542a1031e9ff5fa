"""One field of a build request, checked alone (pure): the error that names the field and the
validators that ``.aicoe-ci.yaml`` (:mod:`.ci_config`), detection (:mod:`.environment`) and
requests (:mod:`.requests`) share. It imports none of them."""

from __future__ import annotations

import re
from typing import Any

STRATEGIES = ("dockerfile", "source", "environment")
# AICoE-CI spellings -> our strategy; "containerfile" is a Dockerfile build of a Containerfile
STRATEGY_ALIASES = {
    "dockerfile": "dockerfile",
    "containerfile": "dockerfile",
    "source": "source",
    "environment": "environment",
}

#: a repository path: plain characters only
PATH_RE = re.compile(r"[A-Za-z0-9._/@+-]+")
_IMAGE_RE = re.compile(
    r"[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]{1,2}[a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?"
)


class BuildRequestError(ValueError):
    """Bad input: ``field`` names what is wrong; str(error) is ``"<field>: <why>"``."""

    def __init__(self, field: str, why: str, status: int = 400) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field
        self.why = why
        self.status = status


def shown(value: str, limit: int = 80) -> str:
    """``value`` quoted for an error message, cut to ``limit`` characters."""
    return repr(value if len(value) <= limit else value[: limit - 3] + "...")


def validate_relative_path(value: Any, f: str, *, allow_empty: bool = True) -> str:
    """A path inside the repository: relative, no '..', plain characters."""
    if value is None or value == "":
        if allow_empty:
            return ""
        raise BuildRequestError(f, "must not be empty")
    if not isinstance(value, str):
        raise BuildRequestError(f, "must be a string")
    if len(value) > 255:
        raise BuildRequestError(f, "longer than 255 characters")
    if value.startswith("/") or value.startswith("-"):
        raise BuildRequestError(f, f"{shown(value)} must be relative to the repository root")
    if not PATH_RE.fullmatch(value) or ".." in value.split("/"):
        raise BuildRequestError(f, f"{shown(value)} must stay inside the repository")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    return "/".join(parts)


def validate_strategy(value: Any, f: str = "strategy") -> str:
    """``dockerfile`` | ``source`` | ``environment`` (``containerfile`` is read as
    ``dockerfile``)."""
    if not isinstance(value, str) or value.strip().lower() not in STRATEGY_ALIASES:
        raise BuildRequestError(f, f"must be one of {', '.join(STRATEGY_ALIASES)}")
    return STRATEGY_ALIASES[value.strip().lower()]


def validate_image(value: Any, f: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 255:
        raise BuildRequestError(f, "must be an image reference of at most 255 characters")
    if not _IMAGE_RE.fullmatch(value):
        raise BuildRequestError(f, f"{shown(value)} is not a valid image reference")
    return value
