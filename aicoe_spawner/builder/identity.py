"""Who asked for a build, as one string per identity (pure).

Hub users, hub services and GitHub webhook senders live in separate namespaces: a plain name is
a hub user without ``:`` in their name; every other identity carries a prefix (``user:``,
``service:``, ``github:``), so no hub user name can equal a webhook sender's identity and the
identities stay apart in ownership, quotas and visibility."""

from __future__ import annotations

import re

from .requests import BuildRequestError

_GITHUB_LOGIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")


def hub_identity(kind: str, name: str) -> str:
    """The requester identity of a JupyterHub user or service (``kind``: user | service)."""
    if kind == "user":
        return name if ":" not in name else f"user:{name}"
    return f"{kind}:{name}"


def github_identity(login: object) -> str:
    """``github:<login>`` for a webhook's ``sender.login`` (BuildRequestError if not a login)."""
    if not isinstance(login, str) or not _GITHUB_LOGIN.fullmatch(login):
        raise BuildRequestError("sender.login", "must be a GitHub login (letters, digits, '-')")
    return f"github:{login}"
