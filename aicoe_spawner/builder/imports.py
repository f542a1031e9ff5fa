"""Image import on plain Kubernetes, the pure part: which ImageStream tags need importing, and
the ``status`` that the results give, written as OpenShift's image import controller writes it.

A spec tag ``from: {kind: DockerImage, name: <registry>/<repo>:<tag>}`` is imported (resolved
to the digest of its manifest or index) when it has no status item yet, when the stream's spec
changed since its item was written (``metadata.generation``), when its last import failed and
the retry interval has passed, or, with ``importPolicy.scheduled: true``, when the scheduled
interval has passed. A result either puts a new item ``{created, dockerImageReference:
<repo>@sha256:…, image: sha256:…, generation}`` first (older ones kept, at most
:data:`MAX_ITEMS`), or records an ``ImportSuccess=False`` condition, leaving the items as they
are: a tag that served an image keeps serving it, and no item ever holds an unresolved
reference. Streams the image builder manages are skipped (the builder writes their status).

Nothing here talks to Kubernetes or a registry; times are epoch seconds passed in.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .imagestream import MANAGED_BY_LABEL, MANAGER

IMPORT_CONDITION = "ImportSuccess"
MAX_ITEMS = 5
MESSAGE_LIMIT = 1000
DEFAULT_INTERVAL = 15 * 60.0  # OpenShift's scheduled import interval
DEFAULT_RETRY = 120.0
PULL_SECRETS_ANNOTATION = "aicoe-spawner.io/pull-secrets"

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_HOST_RE = re.compile(r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


class ReferenceError(ValueError):
    """An image reference cannot be parsed."""


@dataclass(frozen=True, slots=True)
class ImageReference:
    """``registry/repository`` with a ``tag`` or a ``digest``, Docker Hub normalized."""

    registry: str  # as written in references: docker.io, quay.io, 127.0.0.1:5000
    repository: str  # library/python, org/name
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository``, the part before ``@sha256:`` in a pinned reference."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host that serves the distribution API (Docker Hub's is not docker.io)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    def __str__(self) -> str:
        return f"{self.name}@{self.digest}" if self.digest else f"{self.name}:{self.tag}"


def parse_reference(text: Any) -> ImageReference:
    """``[registry/]repository[:tag][@sha256:…]`` -> :class:`ImageReference` as Docker reads
    it: a first component without ``.`` or ``:`` (and not ``localhost``) is a Docker Hub
    repository, a single name there is ``library/<name>``, the default tag is ``latest``."""
    if not isinstance(text, str) or not text.strip():
        raise ReferenceError("the image reference is empty")
    ref = text.strip()
    shown = ref if len(ref) <= 200 else ref[:197] + "..."
    bad = ReferenceError(f"invalid image reference {shown!r}")
    digest = None
    if "@" in ref:
        ref, _, digest = ref.partition("@")
        if not _DIGEST_RE.fullmatch(digest):
            raise bad
    first, sep, rest = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        if not _HOST_RE.fullmatch(first):
            raise bad
        registry, path = first, rest
    else:
        registry, path = DOCKER_HUB, ref
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, _, tag = path.rpartition(":")
        if not _TAG_RE.fullmatch(tag):
            raise bad
    if registry.lower() in _DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    if len(path) > 255 or not _REPO_RE.fullmatch(path):
        raise bad
    if digest is None and tag is None:
        tag = "latest"
    return ImageReference(registry, path, tag, digest)


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resolved:
    """The reference resolved: ``digest`` of its top-level manifest or index, in ``name``."""

    name: str  # registry/repository
    digest: str  # sha256:…


@dataclass(frozen=True, slots=True)
class Failed:
    """The import failed: an OpenShift reason (NotFound, Unauthorized, InternalError,
    InvalidImageReference) and a message for the catalog's card."""

    reason: str
    message: str


Result = Resolved | Failed


@dataclass(frozen=True, slots=True)
class Target:
    """A spec tag to import now, and why (new, changed, retry, scheduled)."""

    tag: str
    reference: str  # from.name as written
    insecure: bool
    why: str


# -- time ------------------------------------------------------------------------------------


def stamp(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_stamp(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


# -- reading a stream ------------------------------------------------------------------------


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _status_tag(stream: dict, tag: str) -> dict:
    for entry in map(_dict, _list(_dict(stream.get("status")).get("tags"))):
        if entry.get("tag") == tag:
            return entry
    return {}


def _import_condition(entry: dict) -> dict | None:
    for cond in map(_dict, _list(entry.get("conditions"))):
        if cond.get("type") == IMPORT_CONDITION and cond.get("status") == "False":
            return cond
    return None


def importable_tags(stream: dict) -> list[tuple[str, str, bool, bool]]:
    """(tag, from.name, scheduled, insecure) of the spec tags that come from a DockerImage;
    none for a stream the image builder manages."""
    meta = _dict(_dict(stream).get("metadata"))
    if _dict(meta.get("labels")).get(MANAGED_BY_LABEL) == MANAGER:
        return []
    out = []
    seen = set()
    for spec in map(_dict, _list(_dict(stream.get("spec")).get("tags"))):
        name, source = spec.get("name"), _dict(spec.get("from"))
        if not (isinstance(name, str) and name) or name in seen:
            continue
        seen.add(name)
        if source.get("kind") != "DockerImage" or not isinstance(source.get("name"), str):
            continue
        policy = _dict(spec.get("importPolicy"))
        out.append(
            (name, source["name"], policy.get("scheduled") is True, policy.get("insecure") is True)
        )
    return out


def due(
    stream: dict,
    now: float,
    attempts: Mapping[str, float] | None = None,
    *,
    interval: float = DEFAULT_INTERVAL,
    retry: float = DEFAULT_RETRY,
) -> list[Target]:
    """The tags of ``stream`` to import at ``now``; ``attempts``: tag -> time of this
    process's last import attempt (the status' own times stand in after a restart)."""
    attempts = attempts or {}
    generation = _int(_dict(stream.get("metadata")).get("generation"))
    out = []
    for tag, reference, scheduled, insecure in importable_tags(stream):
        entry = _status_tag(stream, tag)
        items = [i for i in map(_dict, _list(entry.get("items"))) if i]
        cond = _import_condition(entry)
        times = [attempts.get(tag), parse_stamp(items[0].get("created")) if items else None]
        if cond is not None:
            times.append(parse_stamp(cond.get("lastTransitionTime")))
        known = [t for t in times if t is not None]
        last = max(known) if known else None
        since = None if last is None else now - last

        if cond is not None:
            if _int(cond.get("generation")) < generation:
                why = "changed"  # the spec was edited since the failure: try it at once
            elif since is None or since >= (min(retry, interval) if scheduled else retry):
                why = "retry"
            else:
                continue
        elif not items:
            why = "new"
            if tag in attempts and now - attempts[tag] < retry:
                continue  # attempted moments ago; its result is being written
        elif _int(items[0].get("generation")) < generation:
            why = "changed"
        elif scheduled and (since is None or since >= interval):
            why = "scheduled"
        else:
            continue
        out.append(Target(tag, reference, insecure, why))
    return out


# -- writing the status ----------------------------------------------------------------------


def _clip(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= MESSAGE_LIMIT else message[: MESSAGE_LIMIT - 3] + "..."


def with_results(stream: dict, results: Mapping[str, Result], now: float) -> dict:
    """``stream`` with the status tags of ``results`` (tag -> result) as OpenShift writes them:
    a resolved digest becomes the first item (unless it already is: then only its
    ``generation`` follows the spec) and clears the import condition; a failure sets the
    ``ImportSuccess=False`` condition and keeps the items."""
    out = copy.deepcopy(stream)
    generation = _int(_dict(out.get("metadata")).get("generation")) or 1
    status = out.get("status") if isinstance(out.get("status"), dict) else {}
    out["status"] = status
    tags = [t for t in _list(status.get("tags")) if isinstance(t, dict)]
    status["tags"] = tags
    for tag, result in results.items():
        entry = next((t for t in tags if t.get("tag") == tag), None)
        if entry is None:
            entry = {"tag": tag, "items": []}
            tags.append(entry)
        items = [i for i in map(_dict, _list(entry.get("items"))) if i]
        conditions = [c for c in map(_dict, _list(entry.get("conditions"))) if c]
        others = [c for c in conditions if c.get("type") != IMPORT_CONDITION]
        if isinstance(result, Resolved):
            reference = f"{result.name}@{result.digest}"
            if items and (items[0].get("image"), items[0].get("dockerImageReference")) == (
                result.digest,
                reference,
            ):
                items[0] = {**items[0], "generation": generation}
            else:
                item = {
                    "created": stamp(now),
                    "dockerImageReference": reference,
                    "image": result.digest,
                    "generation": generation,
                }
                rest = [i for i in items if i.get("dockerImageReference") != reference]
                items = [item, *rest][:MAX_ITEMS]
            entry["items"] = items
            if others:
                entry["conditions"] = others
            else:
                entry.pop("conditions", None)
            continue
        message = _clip(result.message) or result.reason
        old = next((c for c in conditions if c.get("type") == IMPORT_CONDITION), None)
        cond = {
            "type": IMPORT_CONDITION,
            "status": "False",
            "reason": result.reason,
            "message": message,
            "lastTransitionTime": stamp(now),
            "generation": generation,
        }
        if old is not None and old.get("status") == "False" and old.get("lastTransitionTime"):
            cond["lastTransitionTime"] = old["lastTransitionTime"]
        entry["items"] = items
        entry["conditions"] = [cond, *others]
    return out


# -- pull secrets ----------------------------------------------------------------------------


def pull_secret_names(stream: dict, service_account: dict | None = None) -> list[str]:
    """Secrets to take registry credentials from, in order: those the stream's
    :data:`PULL_SECRETS_ANNOTATION` names (comma-separated), then the ``imagePullSecrets``
    of ``service_account`` (the namespace's ``default``)."""
    ann = _dict(_dict(_dict(stream).get("metadata")).get("annotations"))
    value = ann.get(PULL_SECRETS_ANNOTATION)
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else []
    for ref in map(_dict, _list(_dict(service_account).get("imagePullSecrets"))):
        names.append(ref.get("name") if isinstance(ref.get("name"), str) else "")
    out: list[str] = []
    for name in names:
        if name and name not in out:
            out.append(name)
    return out


def _registry_key(key: str) -> str:
    """A ``.dockerconfigjson`` ``auths`` key as a registry host (``https://index.docker.io/v1/``
    -> ``docker.io``)."""
    host = re.sub(r"^[a-z]+://", "", key.strip()).split("/", 1)[0].lower()
    return DOCKER_HUB if host in _DOCKER_HUB_ALIASES else host


def dockerconfig(secret: dict) -> dict:
    """The decoded ``.dockerconfigjson`` of a ``kubernetes.io/dockerconfigjson`` Secret (or
    ``.dockercfg``), {} when it has none or it is malformed."""
    data = _dict(_dict(secret).get("data"))
    for key, wrapped in ((".dockerconfigjson", True), (".dockercfg", False)):
        raw = data.get(key)
        if not isinstance(raw, str):
            continue
        try:
            parsed = json.loads(base64.b64decode(raw, validate=True))
        except (binascii.Error, ValueError):
            return {}
        parsed = _dict(parsed)
        return _dict(parsed.get("auths")) if wrapped else parsed
    return {}


def credentials_for(registry: str, auths: Iterable[dict]) -> tuple[str, str] | None:
    """(username, password) for ``registry`` from the first of ``auths`` (``auths`` maps of
    dockerconfigs) with an entry for exactly that host, else None (anonymous). Only entries
    with inline credentials count: no credential helper is ever run."""
    wanted = registry.lower()
    for config in auths:
        for key, entry in _dict(config).items():
            if not isinstance(key, str) or _registry_key(key) != wanted:
                continue
            entry = _dict(entry)
            user, password = entry.get("username"), entry.get("password")
            if isinstance(entry.get("auth"), str) and entry["auth"]:
                try:
                    user, _, password = (
                        base64.b64decode(entry["auth"], validate=True).decode().partition(":")
                    )
                except (binascii.Error, UnicodeDecodeError):
                    continue
            if isinstance(user, str) and isinstance(password, str) and user:
                return user, password
    return None
