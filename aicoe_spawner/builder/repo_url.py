"""Which repository URLs and refs a build may name (pure, with host resolution injected as
``resolve`` so the SSRF checks are testable without DNS): https (or an allowed http) Git URLs
on allowed hosts that resolve to public addresses, and Git ref names that are never
option-like. Every check raises :class:`~.fields.BuildRequestError` naming the field."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

from .fields import PATH_RE as _PATH_RE
from .fields import BuildRequestError
from .fields import shown as _shown

MAX_URL = 2048
MAX_REF = 255
_REF_CHARS = re.compile(r"[A-Za-z0-9._/+-]+")
_HOST_RE = re.compile(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]")

Resolver = Callable[[str], Iterable[str]]


def system_resolver(host: str) -> list[str]:
    """All addresses ``host`` resolves to (empty if it does not resolve)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return sorted({info[4][0] for info in infos})


@dataclass(frozen=True)
class RepoPolicy:
    """Which repository URLs the service accepts.

    ``allowed_hosts``: glob patterns (``github.com``, ``*.example.com``); empty = any public
    host. ``private_hosts``: hosts that may resolve to loopback/private/link-local addresses
    (a test's local git server, an in-cluster GitLab); nothing else may. ``allow_http``:
    accept plain http (only for hosts in ``private_hosts`` unless ``allow_http_any``).
    """

    allowed_hosts: tuple[str, ...] = ("github.com", "gitlab.com")
    private_hosts: tuple[str, ...] = ()
    allow_http: bool = False


def _blocked_address(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def _host_matches(host: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(host, p.lower()) for p in patterns)


def host_addresses(host: str, policy: RepoPolicy, resolve: Resolver = system_resolver) -> list[str]:
    """The addresses ``host`` resolves to now, each one allowed by ``policy`` (a host in
    ``private_hosts`` may resolve anywhere): what a connection to it may use. Raises
    BuildRequestError (field ``repo``) when it does not resolve or an address is not public."""
    host = host.lower().rstrip(".")
    addresses = sorted(set(resolve(host.strip("[]"))))
    if not addresses:
        raise BuildRequestError("repo", f"host {host!r} does not resolve")
    if not _host_matches(host, policy.private_hosts):
        bad = [a for a in addresses if _blocked_address(a)]
        if bad:
            raise BuildRequestError(
                "repo", f"host {host!r} resolves to a non-public address ({bad[0]}); not allowed"
            )
    return addresses


def validate_repo_url(url: Any, policy: RepoPolicy, resolve: Resolver = system_resolver) -> str:
    """A safe https (or allowed http) Git URL, normalized (no trailing slash)."""
    f = "repo"
    if not isinstance(url, str) or not url:
        raise BuildRequestError(f, "must be a non-empty string (an https:// Git URL)")
    if len(url) > MAX_URL:
        raise BuildRequestError(f, f"longer than {MAX_URL} characters")
    if not url.isprintable() or any(c.isspace() for c in url) or "\\" in url:
        raise BuildRequestError(f, "must not contain whitespace, control characters or '\\'")
    if "::" in url.split("/", 1)[0] or url.lower().startswith("ext:"):
        raise BuildRequestError(f, "git remote helpers (ext::, fd::, ...) are not allowed")
    if url.startswith("-"):
        raise BuildRequestError(f, "must not start with '-'")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise BuildRequestError(f, f"not a valid URL ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise BuildRequestError(
            f, f"scheme {scheme + ':' if scheme else '(none)'} is not allowed; use https://"
        )
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise BuildRequestError(f, "credentials in the URL are not allowed")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host or not _HOST_RE.fullmatch(parts.netloc.rsplit(":", 1)[0] if port else parts.netloc):
        raise BuildRequestError(f, "must name a host")
    if parts.query or parts.fragment:
        raise BuildRequestError(f, "query strings and fragments are not allowed")
    path = parts.path
    if not path.strip("/") or ".." in path.split("/") or not _PATH_RE.fullmatch(path):
        raise BuildRequestError(f, f"path {_shown(path)} is not a repository path")
    private_ok = _host_matches(host, policy.private_hosts)
    if scheme == "http" and not (policy.allow_http and private_ok):
        raise BuildRequestError(f, "plain http is not allowed; use https://")
    if policy.allowed_hosts and not (_host_matches(host, policy.allowed_hosts) or private_ok):
        raise BuildRequestError(
            f, f"host {host!r} is not allowed (allowed: {', '.join(policy.allowed_hosts)})"
        )
    if not private_ok:
        host_addresses(host, policy, resolve)
    netloc = host if port is None else f"{host}:{port}"
    return f"{scheme}://{netloc}{path.rstrip('/')}"


def validate_ref(ref: Any) -> str:
    """A tag, branch (optionally ``refs/...``) or full commit SHA; never option-like."""
    f = "ref"
    if not isinstance(ref, str) or not ref:
        raise BuildRequestError(f, "must be a non-empty string (tag, branch or commit SHA)")
    if len(ref) > MAX_REF:
        raise BuildRequestError(f, f"longer than {MAX_REF} characters")
    if ref.startswith("-"):
        raise BuildRequestError(f, f"{_shown(ref)} must not start with '-'")
    if not _REF_CHARS.fullmatch(ref):
        raise BuildRequestError(f, f"{_shown(ref)} contains characters not allowed in a ref")
    if (
        ".." in ref
        or "//" in ref
        or ref.startswith(("/", "."))
        or ref.endswith(("/", ".", ".lock"))
        or "/." in ref
    ):
        raise BuildRequestError(f, f"{_shown(ref)} is not a valid Git ref name")
    return ref
