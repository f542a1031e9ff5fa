"""The builder's git reads are bounded (issue 18, S3 and S6): a file's size is read before its
content, every git output and a fetch's disk are capped, the file cache is bounded in bytes,
git's environment is built from scratch, redirects are never followed and the connection
goes to the addresses checked when it starts. Real git against the project's git server on
loopback."""

from __future__ import annotations

import os
import subprocess
import tracemalloc

import pytest
from harness.git import GitServer, Recorder

from aicoe_spawner.builder import git, git_process
from aicoe_spawner.builder.requests import BuildRequestError, RepoPolicy

LOOPBACK = RepoPolicy(allowed_hosts=(), private_hosts=("127.0.0.1",), allow_http=True)


@pytest.fixture
def server(tmp_path):
    s = GitServer(tmp_path / "git")
    git_process.configure(LOOPBACK)
    yield s
    s.stop()
    git_process.configure(RepoPolicy())


@pytest.fixture(autouse=True)
def empty_cache(monkeypatch):
    monkeypatch.setattr(git, "CACHE", git.ByteCache(git.FILE_CACHE_BYTES, git.FILE_CACHE_SIZE))


@pytest.fixture
def recorder():
    r = Recorder()
    yield r
    r.stop()


def in_bare(server: GitServer, name: str, *args: str, stdin: str | None = None) -> None:
    """``git <args>`` in the server's bare repository ``name``."""
    bare = server.root / f"{name}.git"
    subprocess.run(["git", "-C", str(bare), *args], input=stdin, text=True, check=True)


def fetches(server: GitServer) -> int:
    return sum(1 for method, path in server.requests if "info/refs" in path)


async def test_a_file_over_the_limit_is_refused_by_its_size_and_never_read(server):
    big = "# padding\n" * 500_000  # 5 MB
    sha = server.create_repo("big", {".aicoe-ci.yaml": big, "Dockerfile": "FROM x\n"}, "v1")
    tracemalloc.start()
    try:
        for _ in range(2):  # the second answer comes from the cache
            with pytest.raises(BuildRequestError) as err:
                await git.read_file_at(server.url("big"), sha, "v1", ".aicoe-ci.yaml")
            assert err.value.field == ".aicoe-ci.yaml" and err.value.status == 422
            assert f"is {len(big)} bytes; the builder reads at most 65536" in str(err.value)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak  # the 5 MB were never in the service
    assert fetches(server) == 1
    # a bigger limit reads it
    text = await git.read_file_at(server.url("big"), sha, "v1", ".aicoe-ci.yaml", 6 << 20)
    assert text == big


async def test_a_filtering_server_never_sends_the_big_file(server):
    sha = server.create_repo("filtered", {".aicoe-ci.yaml": "x" * 300_000}, "v1")
    in_bare(server, "filtered", "config", "uploadpack.allowFilter", "true")
    with pytest.raises(BuildRequestError) as err:
        await git.read_file_at(server.url("filtered"), sha, "v1", ".aicoe-ci.yaml")
    assert "is larger than 65536 bytes" in str(err.value), err.value
    # no lazy fetch of the missing blob: one fetch, nothing after it
    assert fetches(server) == 1


async def test_several_files_in_one_fetch_and_what_is_not_a_file(server):
    files = {"requirements.txt": "numpy\n", "sub/runtime.txt": "python-3.11\n", "a/b/c": "c"}
    sha = server.create_repo("env", files, "v1", symlinks={"link.txt": "requirements.txt"})
    url = server.url("env")
    got = await git.read_files_at(
        url, sha, "v1", ["requirements.txt", "sub/runtime.txt", "Pipfile", "./a/b/c"]
    )
    assert got == {
        "requirements.txt": "numpy\n",
        "sub/runtime.txt": "python-3.11\n",
        "Pipfile": None,
        "./a/b/c": "c",
    }
    assert fetches(server) == 1
    assert await git.read_files_at(url, sha, "v1", ["requirements.txt", "Pipfile"]) == {
        "requirements.txt": "numpy\n",
        "Pipfile": None,
    }
    assert fetches(server) == 1  # cached
    for path, what in (("sub", "a tree"), ("link.txt", "a symbolic link")):
        with pytest.raises(BuildRequestError) as err:
            await git.read_files_at(url, sha, "v1", [path])
        assert err.value.field == path and what in str(err.value)
    with pytest.raises(BuildRequestError) as err:
        await git.read_files_at(url, sha, "v1", ["../etc/passwd"])
    assert err.value.field == "../etc/passwd"


async def test_list_tree_is_bounded(server):
    files = {f"d/f{i}.txt": str(i) for i in range(30)} | {"README": "r"}
    sha = server.create_repo("tree", files, "v1")
    url = server.url("tree")
    assert await git.list_tree_at(url, sha, "v1") == sorted(files)
    assert await git.list_tree_at(url, sha, "v1", under="d") == sorted(f for f in files if "/" in f)
    with pytest.raises(BuildRequestError) as err:
        await git.list_tree_at(url, sha, "v1", max_entries=10)
    assert err.value.status == 422 and "more than 10 files" in str(err.value)


async def test_the_file_cache_is_bounded_in_bytes(server, monkeypatch):
    monkeypatch.setattr(git, "CACHE", git.ByteCache(200_000, 1000))
    for i in range(6):
        sha = server.create_repo(f"c{i}", {"f.txt": f"{i}" * 40_000}, "v1")
        assert await git.read_file_at(server.url(f"c{i}"), sha, "v1", "f.txt") == f"{i}" * 40_000
        assert git.CACHE.bytes <= 200_000
    assert 3 <= len(git.CACHE) <= 4
    cache = git.ByteCache(1000, 10)
    cache.put("big", "x", 300)  # over a quarter of the bound: not kept
    assert cache.get("big") is None and cache.bytes == 0
    for i in range(20):
        cache.put(i, i, 50)
    assert len(cache) == 10 and cache.bytes == 500 and cache.get(0) is None


async def test_git_output_and_fetch_disk_are_capped(server, monkeypatch):
    sha = server.create_repo("refs", {"f": "x"}, "v1")
    refs = "".join(f"create refs/tags/tag-{i:04d} {sha}\n" for i in range(200))
    in_bare(server, "refs", "update-ref", "--stdin", stdin=refs)
    monkeypatch.setattr(git_process, "MAX_OUTPUT", 4000)
    with pytest.raises(BuildRequestError) as err:
        await git.resolve_ref(server.url("refs"), "v1")
    assert "its output passed 4000 bytes; stopped" in str(err.value)
    monkeypatch.setattr(git_process, "MAX_OUTPUT", 16 << 20)

    sha = server.create_repo("heavy", {"blob.bin": os.urandom(3 << 20).hex()}, "v1")
    monkeypatch.setattr(git, "MAX_FETCH_BYTES", 1 << 20)
    with pytest.raises(BuildRequestError) as err:
        await git.read_file_at(server.url("heavy"), sha, "v1", ".aicoe-ci.yaml")
    assert err.value.field == "repo" and "passed 1 MiB on disk; stopped" in str(err.value)


async def test_git_gets_no_proxy_or_config_from_the_service_environment(
    server, recorder, monkeypatch
):
    sha = server.create_repo("env", {"f": "x"}, "v1")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{recorder.port}")
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "url.http://127.0.0.1:1/.insteadOf")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", server.base_url + "/")
    assert await git.resolve_ref(server.url("env"), "v1") == (sha, "tag")
    assert await git.read_file_at(server.url("env"), sha, "v1", "f") == "x"
    assert recorder.seen == []


async def test_git_never_follows_a_redirect(server, recorder):
    server.create_repo("moved", {"f": "x"}, "v1")
    server.redirects["moved"] = f"http://localhost:{recorder.port}/latest/meta-data/iam/info"
    with pytest.raises(BuildRequestError) as err:
        await git.resolve_ref(server.url("moved"), "v1")
    assert err.value.field == "repo"
    assert "redirect; the builder does not follow them" in str(err.value)
    assert recorder.seen == []


async def test_the_connection_goes_to_the_addresses_checked(server):
    sha = server.create_repo("pinned", {"f": "x"}, "v1")
    url = f"http://git.example.test:{server.port}/pinned.git"  # no DNS knows this name
    names = {"git.example.test": ["127.0.0.1"]}
    git_process.configure(
        RepoPolicy((), ("git.example.test",), allow_http=True), lambda h: names.get(h, [])
    )
    assert await git.resolve_ref(url, "v1") == (sha, "tag")  # the checked address was used
    assert await git.read_file_at(url, sha, "v1", "f") == "x"
    # the name now resolves to an internal address (DNS rebinding): refused before connecting
    git_process.configure(RepoPolicy((), (), allow_http=True), lambda h: names.get(h, []))
    before = len(server.requests)
    with pytest.raises(BuildRequestError) as err:
        await git.resolve_ref(url, "v1")
    assert err.value.field == "repo" and "non-public address (127.0.0.1)" in str(err.value)
    with pytest.raises(BuildRequestError):
        await git.read_files_at(url, "1" * 40, "v1", ["f"])
    assert len(server.requests) == before
