"""Per-project destinations (pure): which registry path, push Secret and pull Secret a
repository's images get, and which ``.aicoe-ci.yaml`` keys may steer them.

An admin's mapping (``ImageBuilder.destinations``) is a list of entries; the first whose
``repositories`` glob matches the repository (``host/org/name``) decides. A repository no
entry matches pushes where the builder pushes, with the builder's Secret, and may not name a
registry (``registry``/``registry-org`` are a 403 naming the key). A mapped repository may set
the keys its entry's ``allow`` lists, and only to paths at or under the entry's ``registry``;
no key ever names a Secret. Everything here raises :class:`BuildRequestError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Protocol
from urllib.parse import urlsplit

from .fields import BuildRequestError

#: the ``.aicoe-ci.yaml`` build keys an entry may ``allow``
KEYS = ("registry", "registry-org", "registry-project")
ENTRY_KEYS = frozenset({"repositories", "registry", "pushSecret", "pullSecret", "allow"})
FORBIDDEN = 403

_GLOB_RE = re.compile(r"[a-z0-9*?\[\]!.:-]+(/[A-Za-z0-9*?\[\]!._-]+)+")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REGISTRY_RE = re.compile(
    rf"(?:[a-z0-9]+(?:[.-][a-z0-9]+)*|\[[0-9a-f:]+\])(?::[0-9]+)?(?:/{_COMPONENT})*"
)
_ORG_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_PROJECT_RE = re.compile(_COMPONENT)
_SECRET_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass(frozen=True)
class Destination:
    """One entry of the mapping. ``registry``: host[:port][/path] images go under;
    ``push_secret``: a ``kubernetes.io/dockerconfigjson`` Secret of the build namespace
    (empty: push without credentials); ``pull_secret``: one for pulling them (empty: none)."""

    repositories: tuple[str, ...]
    registry: str
    push_secret: str = ""
    pull_secret: str = ""
    allow: frozenset[str] = frozenset()

    def matches(self, repository: str) -> bool:
        return any(fnmatchcase(repository, glob.lower()) for glob in self.repositories)


@dataclass(frozen=True)
class Target:
    """Where one image goes: ``path`` (registry host and path) and ``name`` (the repository
    in it: ``None`` = the stream's name); ``push_secret`` ``None`` = the builder's own."""

    path: str
    name: str | None = None
    push_secret: str | None = None
    pull_secret: str = ""
    mapped: bool = False


class CIKeys(Protocol):
    """What :func:`decide` reads of a :class:`~.ci_config.CIConfig`."""

    registry: str | None
    registry_org: str | None
    registry_project: str | None
    overlay: str
    project_field: str
    registry_field: str
    org_field: str


def parse_destinations(value: Any) -> tuple[Destination, ...]:
    """The mapping of an admin's list of entries (camelCase keys, as in the Helm values);
    ValueError naming the entry and the field."""
    if not isinstance(value, list | tuple):
        raise ValueError("must be a list of entries")
    return tuple(_entry(i, entry) for i, entry in enumerate(value))


def _entry(i: int, entry: Any) -> Destination:
    where = f"entry {i}"
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: must be a mapping with repositories and registry")
    unknown = sorted(set(entry) - ENTRY_KEYS)
    if unknown:
        raise ValueError(
            f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(ENTRY_KEYS))})"
        )
    globs = entry.get("repositories")
    if isinstance(globs, str):
        globs = [globs]
    if not isinstance(globs, list | tuple) or not globs:
        raise ValueError(f"{where}.repositories: must be a non-empty list of host/org/name globs")
    for glob in globs:
        if not isinstance(glob, str) or not _GLOB_RE.fullmatch(glob):
            raise ValueError(
                f"{where}.repositories: {glob!r} is not a host/org/name glob "
                "(e.g. github.com/my-org/*; no scheme, no spaces)"
            )
    registry = entry.get("registry")
    if not isinstance(registry, str) or not registry:
        raise ValueError(f"{where}.registry: missing (a registry host[/path], e.g. quay.io/my-org)")
    if not _REGISTRY_RE.fullmatch(registry):
        raise ValueError(
            f"{where}.registry: {registry!r} is not a registry host[:port][/path] "
            "(lowercase, no tag, no scheme)"
        )
    secrets = {}
    for key in ("pushSecret", "pullSecret"):
        name = entry.get(key) or ""
        if not isinstance(name, str) or (name and not _SECRET_RE.fullmatch(name)):
            raise ValueError(f"{where}.{key}: {name!r} is not a Secret name")
        secrets[key] = name
    allow = entry.get("allow") or []
    if isinstance(allow, str) or not isinstance(allow, list | tuple):
        raise ValueError(f"{where}.allow: must be a list of {', '.join(KEYS)}")
    for key in allow:
        if key not in KEYS:
            raise ValueError(f"{where}.allow: unknown key {key!r} (known: {', '.join(KEYS)})")
    return Destination(
        repositories=tuple(globs),
        registry=registry,
        push_secret=secrets["pushSecret"],
        pull_secret=secrets["pullSecret"],
        allow=frozenset(allow),
    )


def repository_of(url: str) -> str:
    """``https://GitHub.com/Org/Name.git`` -> ``github.com/org/name`` (what globs match)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    path = parts.path.strip("/")
    if path.endswith(".git"):
        path = path[:-4]
    return f"{host}/{path}".lower()


def match(url: str, destinations: Iterable[Destination]) -> Destination | None:
    """The first entry whose globs match ``url``'s repository, else None."""
    repository = repository_of(url)
    return next((d for d in destinations if d.matches(repository)), None)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def _field(ci: CIKeys, key: str) -> str:
    """Where ``key`` was read: the overlay's build or the top-level build."""
    return {
        "registry": ci.registry_field,
        "registry-org": ci.org_field,
        "registry-project": ci.project_field,
    }[key]


def decide(url: str, ci: CIKeys, destinations: Iterable[Destination], default_path: str) -> Target:
    """Where ``url``'s image built under ``ci`` goes: the first matching entry, steered by
    the keys it allows, else ``default_path`` with the builder's Secret. BuildRequestError
    (403) naming the key and the repository for a key the repository may not use or a path
    outside its entry."""
    entry = match(url, destinations)
    given = {
        "registry": ci.registry,
        "registry-org": ci.registry_org,
        "registry-project": ci.registry_project,
    }
    if entry is None:
        for key in ("registry", "registry-org"):
            if given[key]:
                raise BuildRequestError(
                    _field(ci, key),
                    f"{given[key]!r} refused: {url} has no destination of its own, so its "
                    "images go to the builder's registry: remove the key from .aicoe-ci.yaml, "
                    "or ask a hub admin to map the repository (ImageBuilder.destinations)",
                    FORBIDDEN,
                )
        return Target(default_path)
    for key in KEYS:
        if given[key] and key not in entry.allow:
            allowed = ", ".join(k for k in KEYS if k in entry.allow) or "none"
            raise BuildRequestError(
                _field(ci, key),
                f"not allowed for {url} (its destination {entry.registry} allows: {allowed})",
                FORBIDDEN,
            )
    path = entry.registry
    host = path.split("/", 1)[0]
    registry, org = given["registry"], given["registry-org"]
    if registry:
        registry = registry.lower().rstrip("/")
        if not (registry == host or _under(registry, path)):
            raise BuildRequestError(
                _field(ci, "registry"),
                f"{registry!r} is not {url}'s registry ({path})",
                FORBIDDEN,
            )
        if registry != host:
            path = registry
    if org:
        org = org.strip("/").lower()
        chosen = f"{host}/{org}"
        if not _ORG_RE.fullmatch(org) or not _under(chosen, path):
            raise BuildRequestError(
                _field(ci, "registry-org"),
                f"{org!r} would push to {chosen}, outside {url}'s destination {path}",
                FORBIDDEN,
            )
        path = chosen
    name = None
    project = given["registry-project"]
    if project:
        name = project.lower()
        if ci.overlay and "overlays[" not in ci.project_field:
            name = f"{name}-{ci.overlay}"  # one name for every overlay: one image each
        if not _PROJECT_RE.fullmatch(name) or len(name) > 128:
            raise BuildRequestError(
                _field(ci, "registry-project"), f"{project!r} is not an image repository name"
            )
    return Target(
        path, name, push_secret=entry.push_secret, pull_secret=entry.pull_secret, mapped=True
    )
