"""What detection reads of a commit, bounded: one shallow fetch, the tree's path names
(``git ls-tree -r --name-only``), and each wanted small file by its size first
(``git cat-file -s``), its content (``git cat-file -p``) only when at most ``MAX_FILE_BYTES``.
Uses :func:`.git_process.git_output` (http(s) only, no prompts, arguments after ``--``)."""

from __future__ import annotations

import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterable

from . import git_process
from .env_files import decode_text
from .environment import MAX_FILE_BYTES, RepoView
from .naming import is_sha
from .requests import BuildRequestError

MAX_PATHS = 100_000  # a tree with more entries is refused (the listing itself is bounded)
_CACHE: OrderedDict[tuple[str, str], RepoView] = OrderedDict()
CACHE_SIZE = 64


async def read_view(
    repo: str, commit: str, ref: str, wanted: Callable[[tuple[str, ...]], Iterable[str]]
) -> RepoView:
    """The paths at ``commit`` and the contents of ``wanted(paths)`` (None: larger than
    ``MAX_FILE_BYTES``, or not a file). Cached per commit (a commit never changes)."""
    key = (repo, commit)
    cached = _CACHE.get(key)
    if cached is not None and set(wanted(cached.paths)) <= set(cached.files):
        _CACHE.move_to_end(key)
        return cached
    with tempfile.TemporaryDirectory(prefix="aicoe-tree-") as tmp:
        await git_process.git_output("init", "-q", tmp)
        p = "http" if repo.startswith("http:") else "https"
        code, out = await git_process.git_output(
            "fetch", "-q", "--depth", "1", "--", repo, commit, cwd=tmp, protocols=p
        )
        if code != 0 and not is_sha(ref):
            code, out = await git_process.git_output(
                "fetch", "-q", "--depth", "1", "--", repo, ref, cwd=tmp, protocols=p
            )
        if code != 0:
            raise BuildRequestError(
                "repo", f"cannot fetch {commit[:12]}: {out.strip()[-300:]}", 422
            )
        code, got = await git_process.git_output("rev-parse", "FETCH_HEAD", cwd=tmp)
        if got.strip() != commit:
            raise BuildRequestError("ref", f"{ref!r} moved while reading it; retry", 409)
        code, listing = await git_process.git_output(
            "ls-tree", "-r", "-z", "--name-only", "FETCH_HEAD", cwd=tmp
        )
        if code != 0:
            raise BuildRequestError("repo", f"cannot list the files of {commit[:12]}", 422)
        paths = tuple(p for p in listing.split("\0") if p)
        if len(paths) > MAX_PATHS:
            raise BuildRequestError("repo", f"more than {MAX_PATHS} files at {commit[:12]}", 422)
        files: dict[str, str | None] = {}
        for path in sorted(set(wanted(paths))):
            files[path] = await _small_file(tmp, path)
    view = RepoView(paths, files)
    _CACHE[key] = view
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return view


async def _small_file(cwd: str, path: str) -> str | None:
    obj = f"FETCH_HEAD:{path}"
    code, size = await git_process.git_output("cat-file", "-s", obj, cwd=cwd)
    if code != 0 or not size.strip().isdigit() or int(size) > MAX_FILE_BYTES:
        return None
    r = await git_process.run_git(("cat-file", "-p", obj), cwd=cwd)
    return decode_text(r.out) if r.code == 0 else None
