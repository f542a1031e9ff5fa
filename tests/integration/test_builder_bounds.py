"""The builder's resource bounds under attack (issue 18: S3, S4, S5 and S6's git part), through
its public interface: two builder processes (replicas) behind a real JupyterHub, against the
real API server, git over HTTP on loopback. A huge ``.aicoe-ci.yaml`` is refused by its size
and never read; one user's parallel requests start at most their limit of git work, across
replicas; bodies are capped on every route before authentication; git never follows a
redirect. Memory is the builder process's RSS. Nothing runs the build Jobs here."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections import Counter

import aiohttp
import pytest
import pytest_asyncio
from harness.builder import BuilderEnv, BuilderProcess, api_call, builder_hub, user_tokens
from harness.git import GitServer, Recorder
from kubernetes_asyncio import client

from aicoe_devcluster import delete_namespace
from aicoe_devcluster.controlplane import free_port

pytestmark = pytest.mark.integration
USERS = ("alice", "bob", "carol", "root")
HUGE = 100 << 20  # the .aicoe-ci.yaml of the S3 attack: 100 MiB, ~1 MiB packed


@pytest_asyncio.fixture(scope="module")
async def env(kube, control_plane, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("builder-bounds")
    namespace = f"t-bbound-{uuid.uuid4().hex[:6]}"
    await client.CoreV1Api(kube).create_namespace({"metadata": {"name": namespace}})
    git = GitServer(tmp_path / "git")
    token = secrets.token_hex(16)
    port_a, port_b = free_port(), free_port()
    hub = builder_hub(
        control_plane, namespace, tmp_path, token, port_a, builders=USERS[:3], admins=("root",)
    )
    common = dict(
        token=token,
        hub_url=hub.url,
        AICOE_BUILDER_MAX_PER_USER="2",
        AICOE_BUILDER_MAX_TOTAL="10",
        AICOE_BUILDER_INTERVAL="0.5",
    )
    replicas = [
        BuilderProcess(tmp_path, control_plane.kubeconfig, namespace, port=p, **common)
        for p in (port_a, port_b)
    ]
    # together: the hub waits for its external service to answer
    await asyncio.gather(hub.start(90), *(r.start(90) for r in replicas))
    tokens = await user_tokens(hub, USERS)
    yield BuilderEnv(kube=kube, namespace=namespace, git=git, replicas=replicas, tokens=tokens)
    for r in replicas:
        await r.stop()
    await hub.stop()
    git.stop()
    await delete_namespace(kube, namespace)


def rss_mib(replica: BuilderProcess) -> float:
    with open(f"/proc/{replica.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def submit(e, replica: int, user: str, repo: str, ref: str = "v1"):
    return await api_call(
        e.replicas[replica].url, "POST", "api/builds", e.tokens[user], {"repo": repo, "ref": ref}
    )


async def cancel_all(e) -> None:
    url = e.replicas[0].url
    _, listing = await api_call(url, "GET", "api/builds", e.tokens["root"])
    for b in listing["builds"]:
        if b["phase"] in ("pending", "building"):
            status, _ = await api_call(url, "DELETE", f"api/builds/{b['id']}", e.tokens["root"])
            assert status == 200


async def test_a_huge_ci_file_is_refused_by_its_size_and_never_read(env):
    e = env
    line = "# a comment that pads the file, compressed 100 to 1 by git\n"
    text = "build:\n  build-strategy: Source\n" + line * ((HUGE - 32) // len(line))
    e.git.create_repo("huge", {".aicoe-ci.yaml": text, "Dockerfile": "FROM scratch\n"}, "v1")
    e.git.create_repo("warm", {"Dockerfile": "FROM scratch\n"}, "v1")
    size = len(text)
    del text
    assert (await submit(e, 0, "bob", e.git.url("warm"), "no-such-tag"))[0] == 422  # warm up
    before = rss_mib(e.replicas[0])
    for _ in range(4):
        status, body = await submit(e, 0, "bob", e.git.url("huge"))
        assert status == 422 and body["field"] == ".aicoe-ci.yaml", body
        assert f"is {size} bytes; the builder reads at most 65536" in body["message"]
    grown = rss_mib(e.replicas[0]) - before
    print(f"builder RSS {before:.0f} MiB, +{grown:.1f} MiB after 4 requests")
    assert grown < 8, grown
    _, mine = await api_call(e.replicas[0].url, "GET", "api/builds", e.tokens["bob"])
    assert mine["builds"] == []


async def test_parallel_requests_start_at_most_the_limit_of_git_work(env):
    """20 parallel requests of a user with a limit of 2, over both replicas, against a slow
    git server: 2 do their git work, the other 18 are 429 before any git process starts (the
    server sees the git requests of 2 repositories only)."""
    e = env
    await cancel_all(e)
    repos = []
    for i in range(20):
        name = f"par-{uuid.uuid4().hex[:6]}-{i}"
        e.git.create_repo(name, {"Dockerfile": "FROM scratch\n"}, "v1")
        repos.append(e.git.url(name))
    e.git.requests.clear()
    e.git.max_in_flight = 0
    e.git.delay = 0.3
    try:
        start = time.monotonic()
        results = await asyncio.gather(*(submit(e, i % 2, "alice", repos[i]) for i in range(20)))
        took = time.monotonic() - start
    finally:
        e.git.delay = 0
    codes = Counter(status for status, _ in results)
    assert codes == {202: 2, 429: 18}, results
    refused = [body["message"] for status, body in results if status == 429]
    assert all("alice has" in m and "(limit 2)" in m for m in refused), refused
    # only the 2 admitted requests ran git: the refused ones never reached the server
    touched = {path.split(".git/")[0].lstrip("/") for _, path in e.git.requests}
    assert len(touched) == 2, touched
    print(
        f"20 requests in {took:.1f} s; the git server saw {len(e.git.requests)} requests "
        f"for {len(touched)} repositories, at most {e.git.max_in_flight} at once"
    )
    # the requests' places went to their builds
    status, body = await submit(e, 1, "alice", repos[0].replace("par-", "x-"))
    assert status == 429 and "alice has 2 builds running (limit 2)" in body["message"]
    await cancel_all(e)


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_bodies_are_capped_on_every_route_before_authentication(env, method):
    e = env
    replica = e.replicas[1]
    big = b"z" * (16 << 20)
    paths = ["", "api/builds/x", "api/builds/x/logs", "api/builds/x/events", "api/images"]
    paths += ["health", "metrics", "oauth_callback", "static/builder.js"]
    before = rss_mib(replica)
    start = time.monotonic()

    async def send(path):
        async with aiohttp.ClientSession() as s:
            async with s.request(method, replica.url + path, data=big) as r:
                return path, r.status, await r.text()

    results = await asyncio.gather(*(send(p) for p in paths * 3))
    took = time.monotonic() - start
    assert all(status == 413 for _, status, _ in results), [(p, s) for p, s, _ in results]
    grown = rss_mib(replica) - before
    print(f"{len(results)} x 16 MiB {method}: {took:.1f} s, RSS +{grown:.1f} MiB")
    assert grown < 16, grown  # 27 bodies of 16 MiB were never held
    # a build request over 64 KiB is refused too, before its token is checked
    status, body = await api_call(replica.url, "POST", "api/builds", data=b"{" * (65 << 10))
    assert status == 413 and body["field"] == "body", body


async def test_git_never_follows_a_redirect_to_a_refused_host(env):
    e = env
    e.git.create_repo("moved", {"Dockerfile": "FROM scratch\n"}, "v1")
    inner = Recorder()  # "localhost" is not an allowed host of the builder
    e.git.redirects["moved"] = f"http://localhost:{inner.port}/latest/meta-data/iam/info"
    try:
        status, body = await submit(e, 0, "carol", e.git.url("moved"))
    finally:
        e.git.redirects.clear()
        inner.stop()
    assert status == 422 and body["field"] == "repo", body
    assert "redirect; the builder does not follow them" in body["message"]
    assert inner.seen == []
