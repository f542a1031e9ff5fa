"""Deterministic names for what a build makes (pure): ImageStream names of repositories,
requesters and projects, tags of refs, label-safe hashes. See DESIGN.md's Ownership: the three
kinds of stream names never meet."""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit

_SHA_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")


def is_sha(ref: str) -> bool:
    """Whether ``ref`` is a full commit id (SHA-1 or SHA-256)."""
    return bool(_SHA_RE.fullmatch(ref))


# -- stream names and tags ---------------------------------------------------------------


def dns_label(text: str, limit: int = 63) -> str:
    """``text`` as a DNS-1123 label of at most ``limit`` characters (hash suffix if cut)."""
    label = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "image"
    if len(label) > limit:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        label = label[: limit - 9].rstrip("-") + "-" + digest
    return label


def stream_name_for(repo: str) -> str:
    """``https://github.com/Org/My_Repo.git`` -> ``org-my-repo`` (DNS-1123, ≤ 63)."""
    path = urlsplit(repo).path.strip("/")
    if path.endswith(".git"):
        path = path[:-4]
    return dns_label(path.replace("/", "-"))


def hashed_stream_name(repo: str) -> str:
    """:func:`stream_name_for` plus a hash of the whole URL, for when the short name belongs to
    another repository (``a-b/c`` and ``a/b-c``, or the same path on two hosts)."""
    digest = hashlib.sha256(repo.encode()).hexdigest()[:8]
    return f"{stream_name_for(repo)[:54].rstrip('-')}-{digest}"


# A name a request chooses lives under its requester's prefix, a name a repository's
# .aicoe-ci.yaml chooses under the repository's default name: ``<requester>--<name>`` and
# ``<repo default>---<project>``. Default names (:func:`dns_label`) never hold ``--``, and
# neither part of a chosen name does (nor starts or ends with ``-``), so the three kinds never
# meet: no request can take a repository's default name, nor another requester's or
# another repository's chosen one.
REQUESTER_SEPARATOR = "--"
PROJECT_SEPARATOR = "---"


def requester_prefix(requester: str) -> str:
    """A DNS-label stand-in for a requester identity: the identity itself when it is one
    (``alice``), else its label plus a hash (``github-octo-1a2b3c4d5e``); at most 30."""
    label = dns_label(requester, 30)
    if label == requester:
        return label
    digest = hashlib.sha256(requester.encode()).hexdigest()[:10]
    return f"{label[:19].rstrip('-')}-{digest}"


def _chosen(prefix: str, separator: str, name: str) -> str:
    head = dns_label(prefix, 30)
    return head + separator + dns_label(name, 63 - len(head) - len(separator))


def requester_stream_name(requester: str, name: str) -> str:
    """The stream of a request's ``name``: ``<requester prefix>--<name>`` (≤ 63)."""
    return _chosen(requester_prefix(requester), REQUESTER_SEPARATOR, name)


def project_stream_name(repo: str, project: str, *, hashed: bool = False) -> str:
    """The stream of a ``.aicoe-ci.yaml`` ``registry-project``: ``<repo default>---<project>``
    (``hashed``: with the hashed default name, see :func:`hashed_stream_name`)."""
    base = hashed_stream_name(repo) if hashed else stream_name_for(repo)
    return _chosen(base, PROJECT_SEPARATOR, project)


def tag_for(ref: str, commit: str) -> str:
    """The ImageStream tag for a ref: the tag/branch name made safe, or the short commit."""
    if is_sha(ref):
        return commit[:12]
    for prefix in ("refs/tags/", "refs/heads/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix) :]
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", ref).strip("-.") or commit[:12]
    if len(tag) > 63 or not _TAG_RE.fullmatch(tag):
        tag = tag[:50].rstrip("-.") + "-" + commit[:12]
    return tag


def repo_hash(repo: str) -> str:
    return hashlib.sha256(repo.encode()).hexdigest()[:16]


def user_label(user: str) -> str:
    """A label-safe stand-in for a user name (hash; names may hold any character)."""
    return hashlib.sha256(user.encode()).hexdigest()[:16]
