"""Git over the network, bounded (every process through :mod:`.git_process`): ``git
ls-remote`` to resolve a ref to a commit, and a shallow fetch of one commit to read small files
from it (:func:`read_files_at`, :func:`read_file_at`) or list its tree (:func:`list_tree_at`).

A fetch asks the server to leave out blobs over the read limit (``--filter=blob:limit``),
keeps the pack packed (git streams big objects) and is stopped when its temporary directory
passes :data:`MAX_FETCH_BYTES`. A file's size is read (``cat-file --batch-check``) before its
content, so nothing over the limit is ever read into the service."""

from __future__ import annotations

import os
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .ci_config import MAX_BYTES as CI_MAX_BYTES
from .fields import BuildRequestError, validate_relative_path
from .git_process import git_output, protocols_for, run_git
from .naming import is_sha

MAX_FETCH_BYTES = 128 << 20  # the temporary repository of one fetch, on disk
MAX_FILE_BYTES = CI_MAX_BYTES  # default limit of one file read from a repository
MAX_FILES = 64  # paths per read_files_at call
MAX_TREE_ENTRIES = 20_000  # paths list_tree_at returns at most


PUBLISHED_REF_PREFIXES = ("refs/heads/", "refs/tags/")


def _advertised(out: str) -> dict[str, str]:
    """``git ls-remote`` output -> {ref name: sha}."""
    refs: dict[str, str] = {}
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        if sha and name:
            refs[name] = sha
    return refs


def published_ref(refs: dict[str, str], ref: str, repo: str) -> tuple[str, str]:
    """``(commit, kind)`` of ``ref`` among the advertised ``refs``, if the repository
    publishes it at a branch or tag (a commit SHA: at the tip of one); else a 422 naming
    ``ref`` (pure)."""
    if ref.startswith("refs/") and not ref.startswith(PUBLISHED_REF_PREFIXES):
        raise BuildRequestError(
            "ref",
            f"{ref!r} is not a branch or tag: only refs/heads/... and refs/tags/... are "
            "built (pull and merge requests hold content that is not the repository's)",
            422,
        )
    if is_sha(ref):
        tips = {
            sha
            for name, sha in refs.items()
            if name.removesuffix("^{}").startswith(PUBLISHED_REF_PREFIXES)
        }
        if ref not in tips:
            raise BuildRequestError(
                "ref",
                f"commit {ref[:12]} is not the tip of a branch or tag of {repo}; build a "
                "branch or tag (commits of forks and pull requests are never published)",
                422,
            )
        return ref, "commit"
    candidates = [ref] if ref.startswith("refs/") else [f"refs/tags/{ref}", f"refs/heads/{ref}"]
    for name in candidates:
        peeled = refs.get(name + "^{}")  # annotated tag -> its commit
        if peeled or name in refs:
            kind = "tag" if name.startswith("refs/tags/") else "branch"
            return peeled or refs[name], kind
    raise BuildRequestError("ref", f"{ref!r} is not a tag or branch of {repo}", 422)


async def resolve_ref(repo: str, ref: str) -> tuple[str, str]:
    """``(commit, kind)`` with kind tag|branch|commit, via ``git ls-remote``: only what the
    repository publishes (:func:`published_ref`)."""
    code, out = await git_output("ls-remote", "--", repo, protocols=protocols_for(repo))
    if code != 0:
        raise BuildRequestError("repo", f"cannot list refs of {repo}: {out.strip()[-300:]}", 422)
    return published_ref(_advertised(out), ref, repo)


# -- reading a commit ----------------------------------------------------------------------


class ByteCache:
    """An LRU mapping bounded in entries and in (approximate) bytes: what a commit holds never
    changes, so a dedup hit or a retry does not fetch the commit again."""

    def __init__(self, max_bytes: int, max_entries: int) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.bytes = 0
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Any) -> Any:
        hit = self._items.get(key)
        if hit is None:
            return None
        self._items.move_to_end(key)
        return hit[0]

    def put(self, key: Any, value: Any, cost: int) -> None:
        """Keep ``value`` (``cost`` bytes); one over a quarter of the bound is not kept."""
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        if cost > self.max_bytes // 4:
            return
        self._items[key] = (value, cost)
        self.bytes += cost
        while self.bytes > self.max_bytes or len(self._items) > self.max_entries:
            _, (_, gone) = self._items.popitem(last=False)
            self.bytes -= gone

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0


FILE_CACHE_BYTES = 8 << 20
FILE_CACHE_SIZE = 1024
CACHE = ByteCache(FILE_CACHE_BYTES, FILE_CACHE_SIZE)


@dataclass(frozen=True)
class _File:
    """What a path holds at a commit: ``text`` (None: absent or not read) and the blob's
    ``size`` (0 when absent; when not ``exact``, a lower bound: the server left it out)."""

    text: str | None
    size: int
    exact: bool = True

    def cost(self, key: tuple[str, ...]) -> int:
        return sys.getsizeof(self.text) + sum(map(sys.getsizeof, key)) + 200


def _too_big(path: str, entry: _File, max_bytes: int) -> BuildRequestError:
    if entry.exact:
        why = f"is {entry.size} bytes; the builder reads at most {max_bytes}"
    else:
        why = f"is larger than {max_bytes} bytes, the most the builder reads"
    return BuildRequestError(path, why, 422)


def _cached(key: tuple[str, ...], max_bytes: int) -> _File | None:
    """The cached entry if it answers a read of at most ``max_bytes``; raises when too big."""
    entry: _File | None = CACHE.get(key)
    if entry is None:
        return None
    if entry.size > max_bytes:
        raise _too_big(key[-1], entry, max_bytes)
    if entry.text is None and entry.size:
        return None  # too big for an earlier, smaller limit: read again
    return entry


async def _fetch(repo: str, commit: str, ref: str, tmp: str, blob_limit: int | None) -> None:
    """``commit`` of ``repo`` (depth 1; where the server filters, only blobs of at most
    ``blob_limit`` bytes, none for None) into the new bare repository ``tmp``, FETCH_HEAD
    checked to be ``commit``. BuildRequestError (422, 409) when it cannot."""
    await run_git(("init", "-q", "--bare", tmp))
    spec = "blob:none" if blob_limit is None else f"blob:limit={blob_limit + 1}"
    base = (
        "fetch",
        "-q",
        "--no-tags",
        "--no-recurse-submodules",
        "--depth",
        "1",
        f"--filter={spec}",
        "--",
        repo,
    )
    p = protocols_for(repo)
    r = await run_git((*base, commit), cwd=tmp, protocols=p, disk_limit=MAX_FETCH_BYTES)
    if r.code and not r.stopped and not is_sha(ref):  # servers that refuse a commit as want
        r = await run_git((*base, ref), cwd=tmp, protocols=p, disk_limit=MAX_FETCH_BYTES)
    if r.code:
        raise BuildRequestError("repo", f"cannot fetch {commit[:12]}: {r.failure()}", 422)
    # not a promisor any more (the remote's section, which fetch appended, goes): a missing
    # (filtered) blob is missing, never fetched lazily
    config = os.path.join(tmp, "config")
    with open(config) as f:
        text = f.read()
    with open(config, "w") as f:
        f.write(text.split("\n[remote ", 1)[0] + "\n")
    with open(os.path.join(tmp, "FETCH_HEAD")) as f:
        got = f.read(200).split("\t", 1)[0].strip()
    if got != commit:
        raise BuildRequestError("ref", f"{ref!r} moved while reading it; retry", 409)


async def _entries(tmp: str, paths: list[str]) -> dict[str, tuple[str, str, str]]:
    """path -> (mode, type, object id) at FETCH_HEAD, for those of ``paths`` that exist."""
    r = await run_git(("ls-tree", "-z", "--full-tree", "FETCH_HEAD", "--", *paths), cwd=tmp)
    if r.code:
        raise BuildRequestError("repo", f"cannot read the tree: {r.failure()}", 422)
    found = {}
    for record in r.out.split(b"\0"):
        head, _, path = record.decode(errors="replace").partition("\t")
        parts = head.split(" ")
        if len(parts) == 3 and path:
            found[path] = (parts[0], parts[1], parts[2])
    return found


async def _read_blobs(tmp: str, paths: list[str], max_bytes: int) -> dict[str, _File]:
    """The files ``paths`` at FETCH_HEAD, each read only when its size is at most
    ``max_bytes`` (else an entry without text); BuildRequestError for what is not a file."""
    entries = await _entries(tmp, paths)
    result = {p: _File(None, 0) for p in paths if p not in entries}
    for path, (mode, kind, _) in entries.items():
        if kind != "blob" or mode not in ("100644", "100755"):
            what = "a symbolic link" if mode == "120000" else f"a {kind}"
            raise BuildRequestError(path, f"is {what}, not a file the builder reads", 422)
    oids = {path: entries[path][2] for path in paths if path in entries}
    if not oids:
        return result
    listing = "".join(f"{oid}\n" for oid in oids.values()).encode()
    r = await run_git(("cat-file", "--batch-check"), cwd=tmp, stdin=listing)
    sizes: dict[str, int | None] = {}
    for line in r.out.decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "blob" and parts[2].isdigit():
            sizes[parts[0]] = int(parts[2])
        elif len(parts) == 2 and parts[1] == "missing":
            sizes[parts[0]] = None  # left out by the server's filter: over the limit
    wanted = []
    for path, oid in oids.items():
        size = sizes.get(oid, None)
        if size is None:
            result[path] = _File(None, max_bytes + 1, exact=False)
        elif size > max_bytes:
            result[path] = _File(None, size)
        else:
            wanted.append((path, oid, size))
    if not wanted:
        return result
    listing = "".join(f"{oid}\n" for _, oid, _ in wanted).encode()
    total = sum(size for _, _, size in wanted) + 128 * len(wanted)
    r = await run_git(("cat-file", "--batch"), cwd=tmp, stdin=listing, limit=total)
    if r.code:
        raise BuildRequestError("repo", f"cannot read files: {r.failure()}", 422)
    data, pos = r.out, 0
    for path, _oid, size in wanted:
        end = data.index(b"\n", pos)
        pos = end + 1
        result[path] = _File(data[pos : pos + size].decode(errors="replace"), size)
        pos += size + 1
    return result


async def read_files_at(
    repo: str, commit: str, ref: str, paths: Iterable[str], max_bytes: int = MAX_FILE_BYTES
) -> dict[str, str | None]:
    """``{path: content}`` of files at ``commit`` (None for a path that does not exist), in
    one shallow fetch, cached (bounded in bytes). A file over ``max_bytes`` is never read:
    BuildRequestError (422) naming the path and its size; also for a path that is a directory,
    symbolic link or submodule. ``ref`` is fetched instead when the server refuses a commit."""
    wanted = list(dict.fromkeys(paths))
    if len(wanted) > MAX_FILES:
        raise ValueError(f"read_files_at: at most {MAX_FILES} paths")
    normal = {p: validate_relative_path(p, p, allow_empty=False) for p in wanted}
    found: dict[str, _File] = {}
    for path in wanted:
        entry = _cached((repo, commit, normal[path]), max_bytes)
        if entry is not None:
            found[path] = entry
    missing = sorted({normal[p] for p in wanted if p not in found})
    if missing:
        with tempfile.TemporaryDirectory(prefix="aicoe-git-") as tmp:
            await _fetch(repo, commit, ref, tmp, max_bytes)
            read = await _read_blobs(tmp, missing, max_bytes)
        for path, entry in read.items():
            key = (repo, commit, path)
            CACHE.put(key, entry, entry.cost(key))
        for path in wanted:
            found.setdefault(path, read[normal[path]])
    for path in wanted:
        if found[path].size > max_bytes:
            raise _too_big(path, found[path], max_bytes)
    return {path: found[path].text for path in wanted}


async def read_file_at(
    repo: str, commit: str, ref: str, path: str, max_bytes: int = MAX_FILE_BYTES
) -> str | None:
    """The content of ``path`` at ``commit`` (None if absent); see :func:`read_files_at`."""
    return (await read_files_at(repo, commit, ref, [path], max_bytes))[path]


async def list_tree_at(
    repo: str, commit: str, ref: str, under: str = "", max_entries: int = MAX_TREE_ENTRIES
) -> list[str]:
    """The paths of the files (regular files and symbolic links; not submodules) at ``commit``
    under the directory ``under`` (the whole tree for ""), sorted, in a fetch without blobs
    where the server filters; cached. BuildRequestError (422) when there are more than
    ``max_entries``."""
    under = validate_relative_path(under, "under")
    key = (repo, commit, f"tree:{under}")
    where = f" under {under}/" if under else ""
    too_many = BuildRequestError(
        "repo", f"has more than {max_entries} files{where} at {commit[:12]}", 422
    )
    hit = CACHE.get(key)
    if hit is None:
        with tempfile.TemporaryDirectory(prefix="aicoe-git-") as tmp:
            await _fetch(repo, commit, ref, tmp, None)
            args = ("ls-tree", "-r", "-z", "--full-tree", "FETCH_HEAD")
            r = await run_git(
                (*args, "--", under) if under else args, cwd=tmp, limit=max_entries * 320
            )
        if r.stopped or r.out.count(b"\0") > max_entries:
            raise too_many
        if r.code:
            raise BuildRequestError("repo", f"cannot read the tree: {r.failure()}", 422)
        files = []
        for record in r.out.split(b"\0"):
            head, _, path = record.decode(errors="replace").partition("\t")
            if head.split(" ")[1:2] == ["blob"] and path:
                files.append(path)
        hit = tuple(sorted(files))
        CACHE.put(key, hit, sum(map(sys.getsizeof, hit)) + sys.getsizeof(hit) + 200)
    if len(hit) > max_entries:
        raise too_many
    return list(hit)
