"""Git over the network, with options that cannot be smuggled in: ``git ls-remote`` to resolve
a ref to a commit, and a shallow fetch of one commit to read ``.aicoe-ci.yaml``. Only the
http(s) transports are enabled, no credentials are prompted for, and every argument follows
``--``."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections import OrderedDict

from .requests import BuildRequestError, is_sha

TIMEOUT = 60
# (repo, commit, path) -> content: what a commit holds never changes, so a dedup hit or a
# retry does not fetch the commit again (bounded; oldest entries go first)
_FILE_CACHE: OrderedDict[tuple[str, str, str], str | None] = OrderedDict()
FILE_CACHE_SIZE = 256
_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "/bin/false",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
}


async def _git(*args: str, cwd: str | None = None, protocols: str = "https") -> tuple[int, str]:
    env = dict(os.environ, GIT_ALLOW_PROTOCOL=protocols, **_ENV)
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 124, "timed out"
    return proc.returncode or 0, out.decode(errors="replace")


def _protocols(repo: str) -> str:
    return "http" if repo.startswith("http:") else "https"


# refs whose content the repository publishes: its branches and tags. Anything else that a
# server advertises (refs/pull/*, refs/merge-requests/*, refs/changes/*, ...) holds the
# content of forks and proposed changes, never published under the repository's stream.
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
    code, out = await _git("ls-remote", "--", repo, protocols=_protocols(repo))
    if code != 0:
        raise BuildRequestError("repo", f"cannot list refs of {repo}: {out.strip()[-300:]}", 422)
    return published_ref(_advertised(out), ref, repo)


async def read_file_at(repo: str, commit: str, ref: str, path: str) -> str | None:
    """The content of ``path`` at ``commit`` (None if absent); a shallow fetch, cached."""
    key = (repo, commit, path)
    if key in _FILE_CACHE:
        _FILE_CACHE.move_to_end(key)
        return _FILE_CACHE[key]
    text = await _read_file_at(repo, commit, ref, path)
    _FILE_CACHE[key] = text
    while len(_FILE_CACHE) > FILE_CACHE_SIZE:
        _FILE_CACHE.popitem(last=False)
    return text


async def _read_file_at(repo: str, commit: str, ref: str, path: str) -> str | None:
    with tempfile.TemporaryDirectory(prefix="aicoe-git-") as tmp:
        await _git("init", "-q", tmp)
        p = _protocols(repo)
        code, out = await _git(
            "fetch", "-q", "--depth", "1", "--", repo, commit, cwd=tmp, protocols=p
        )
        if code != 0 and not is_sha(ref):
            code, out = await _git(
                "fetch", "-q", "--depth", "1", "--", repo, ref, cwd=tmp, protocols=p
            )
        if code != 0:
            raise BuildRequestError(
                "repo", f"cannot fetch {commit[:12]}: {out.strip()[-300:]}", 422
            )
        code, got = await _git("rev-parse", "FETCH_HEAD", cwd=tmp)
        if got.strip() != commit:
            raise BuildRequestError("ref", f"{ref!r} moved while reading it; retry", 409)
        code, text = await _git("show", f"FETCH_HEAD:{path}", cwd=tmp)
        return text if code == 0 else None
