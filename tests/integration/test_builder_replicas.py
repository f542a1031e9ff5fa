"""Two builder processes (replicas) against one cluster and one real JupyterHub: limits that
hold under parallel requests across both, a webhook delivery that starts one build however
often and wherever it arrives, cookies that both replicas (and a restarted one) accept, body
and event-stream limits. Nothing runs the build Jobs here, so builds stay active."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import uuid
from collections import Counter

import aiohttp
import pytest
import pytest_asyncio
from harness.builder import (
    BuilderEnv,
    BuilderProcess,
    api_call,
    start_builder_hub,
    user_tokens,
)
from harness.git import GitServer
from kubernetes_asyncio import client

from aicoe_devcluster import delete_namespace
from aicoe_devcluster.controlplane import free_port

pytestmark = pytest.mark.integration
PREFIX = "/services/image-builder/"
SECRET = "replica-webhook-secret"


@pytest_asyncio.fixture(scope="module")
async def env(kube, control_plane, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("builder-replicas")
    namespace = f"t-brep-{uuid.uuid4().hex[:6]}"
    await client.CoreV1Api(kube).create_namespace({"metadata": {"name": namespace}})
    git = GitServer(tmp_path / "git")
    token = secrets.token_hex(16)
    port_a, port_b = free_port(), free_port()
    hub = await start_builder_hub(
        control_plane,
        namespace,
        tmp_path,
        token,
        port_a,
        builders=("alice", "bob"),
        admins=("root",),
    )
    common = dict(
        token=token,
        hub_url=hub.url,
        AICOE_BUILDER_MAX_PER_USER="2",
        AICOE_BUILDER_MAX_TOTAL="3",
        AICOE_BUILDER_WEBHOOK_SECRET=SECRET,
        AICOE_BUILDER_MAX_STREAMS="3",
        AICOE_BUILDER_MAX_STREAMS_PER_USER="2",
        AICOE_BUILDER_INTERVAL="0.2",
    )
    replicas = [
        BuilderProcess(tmp_path, control_plane.kubeconfig, namespace, port=p, **common)
        for p in (port_a, port_b)
    ]
    await asyncio.gather(*(r.start() for r in replicas))
    tokens = await user_tokens(hub, ("alice", "bob", "root"))
    yield BuilderEnv(
        kube=kube, namespace=namespace, hub=hub, git=git, replicas=replicas, tokens=tokens
    )
    for r in replicas:
        await r.stop()
    await hub.stop()
    git.stop()
    await delete_namespace(kube, namespace)


async def call(url, method="GET", user=None, e=None, body=None, data=None, headers=None):
    token = e.tokens[user] if user else None
    return await api_call(url, method, "", token, json_body=body, data=data, headers=headers)


async def cancel_all(e) -> None:
    a = e.replicas[0].url
    _, listing = await call(a + "api/builds", user="root", e=e)
    for b in listing["builds"]:
        if b["phase"] in ("pending", "building"):
            status, _ = await call(a + f"api/builds/{b['id']}", "DELETE", "root", e)
            assert status == 200


async def test_parallel_requests_hold_the_limits_across_two_replicas(env):
    e = env
    await cancel_all(e)
    repos = []
    for i in range(36):
        name = f"par-{uuid.uuid4().hex[:6]}-{i}"
        e.git.create_repo(name, {"Dockerfile": "FROM scratch\n"}, tag="v1")
        repos.append(e.git.url(name))

    async def submit(i, user):
        url = e.replicas[i % 2].url + "api/builds"
        return await call(url, "POST", user, e, {"repo": repos[i], "ref": "v1"})

    results = await asyncio.gather(*(submit(i, "alice") for i in range(25)))
    codes = Counter(status for status, _ in results)
    assert codes == {202: 2, 429: 23}, results
    refused = [body["message"] for status, body in results if status == 429]
    assert all("limit 2" in m for m in refused), refused
    _, mine = await call(e.replicas[1].url + "api/builds", user="alice", e=e)
    assert len([b for b in mine["builds"] if b["phase"] == "pending"]) == 2

    # the service-wide limit (3) across both replicas: bob gets exactly the one slot left
    results = await asyncio.gather(*(submit(i, "bob") for i in range(25, 35)))
    codes = Counter(status for status, _ in results)
    assert codes == {202: 1, 429: 9}, results
    assert any("service limit 3" in body["message"] for s, body in results if s == 429)
    await cancel_all(e)
    # cancelled builds free their slots
    assert (await submit(35, "bob"))[0] == 202
    await cancel_all(e)


def signed(payload: dict) -> tuple[bytes, str]:
    body = json.dumps(payload).encode()
    return body, "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


async def test_a_webhook_delivery_starts_one_build_across_replicas(env):
    e = env
    await cancel_all(e)
    name = f"hook-{uuid.uuid4().hex[:6]}"
    e.git.create_repo(name, {"Dockerfile": "FROM scratch\n"}, tag="v1")
    body, signature = signed(
        {
            "action": "published",
            "release": {"tag_name": "v1"},
            "repository": {"clone_url": e.git.url(name)},
            "sender": {"login": "octo"},
        }
    )
    headers = {"X-GitHub-Event": "release", "X-Hub-Signature-256": signature}

    async def deliver(i, delivery):
        url = e.replicas[i % 2].url + "api/webhooks/github"
        h = {**headers, "X-GitHub-Delivery": delivery}
        return await call(url, "POST", data=body, headers=h)

    results = await asyncio.gather(*(deliver(i, "delivery-1") for i in range(6)))
    assert Counter(s for s, _ in results) == {202: 1, 200: 5}, results
    (build,) = [b for s, b in results if s == 202]
    # cancel it; a redelivery (same id) or a replay (same signed body, new id) changes nothing
    status, cancelled = await call(
        e.replicas[0].url + f"api/builds/{build['id']}", "DELETE", "root", e
    )
    assert cancelled["phase"] == "cancelled"
    await e.replicas[0].stop()  # what was received survives a restart
    await e.replicas[0].start()
    for i, delivery in enumerate(["delivery-1", "delivery-2"]):
        status, reply = await deliver(i, delivery)
        assert status == 200 and "received before" in reply["message"], reply
    status, now = await call(e.replicas[1].url + f"api/builds/{build['id']}", user="root", e=e)
    assert now["phase"] == "cancelled"
    # a delivery without its id is refused before anything happens
    status, reply = await call(
        e.replicas[0].url + "api/webhooks/github", "POST", data=body, headers=headers
    )
    assert status == 400 and reply["field"] == "X-GitHub-Delivery"


async def test_cookies_of_one_replica_work_on_the_other_and_after_a_restart(env):
    e = env
    web = await e.hub.login("alice")
    try:
        # the OAuth round trip through the hub's proxy ends on replica A
        async with web.session.get(f"{e.hub.url}{PREFIX}") as r:
            assert r.status == 200, await r.text()
            page = await r.text()
        data = re.search(r'<script type="application/json" id="builder-data">(.*?)</script>', page)
        xsrf = json.loads(data.group(1))["xsrf"]
        for replica in e.replicas:
            async with web.session.get(replica.url + "api/builds") as r:
                assert r.status == 200, (replica.port, r.status)
            # a POST with the XSRF token issued by replica A: authenticated, then validated
            async with web.session.post(
                replica.url + "api/builds", json={"ref": "v1"}, headers={"X-XSRFToken": xsrf}
            ) as r:
                reply = await r.json()
                assert r.status == 400 and reply["field"] == "repo", (replica.port, reply)
        await e.replicas[1].stop()
        await e.replicas[1].start()
        async with web.session.get(e.replicas[1].url + "api/builds") as r:
            assert r.status == 200
    finally:
        await web.close()


async def test_bodies_are_capped_before_authentication(env):
    e = env
    big = b"x" * (2 << 20)
    for path in ("api/builds", "api/webhooks/github"):
        status, reply = await call(e.replicas[0].url + path, "POST", data=big)
        assert status == 413 and reply["field"] == "body", (path, status, reply)

    async def chunks():  # no Content-Length: counted while it arrives
        for _ in range(40):
            yield b"y" * (64 << 10)

    async with aiohttp.ClientSession() as s:
        async with s.post(e.replicas[1].url + "api/builds", data=chunks()) as r:
            assert r.status == 413


async def test_event_streams_are_capped_and_resume_ids_checked(env):
    e = env
    await cancel_all(e)
    name = f"ev-{uuid.uuid4().hex[:6]}"
    e.git.create_repo(name, {"Dockerfile": "FROM scratch\n"}, tag="v1")
    a = e.replicas[0].url
    status, build = await call(
        a + "api/builds", "POST", "alice", e, {"repo": e.git.url(name), "ref": "v1"}
    )
    assert status == 202
    events = a + f"api/builds/{build['id']}/events"
    status, reply = await call(events, user="alice", e=e, headers={"Last-Event-ID": "abc:pending"})
    assert status == 400 and reply["field"] == "Last-Event-ID"

    async with aiohttp.ClientSession() as s:
        auth = {"Authorization": f"token {e.tokens['alice']}"}
        open_streams = []
        for _ in range(2):
            r = await s.get(events, headers=auth)
            assert r.status == 200
            await r.content.readline()
            open_streams.append(r)
        status, reply = await call(events, user="alice", e=e)
        assert status == 429 and "limit 2" in reply["message"]
        root = {"Authorization": f"token {e.tokens['root']}"}
        r = await s.get(events, headers=root)
        assert r.status == 200
        open_streams.append(r)
        status, reply = await call(events, user="root", e=e)
        assert status == 429 and "limit 3" in reply["message"]
        for r in open_streams:
            r.close()

    async def freed():
        return await call(events, user="root", e=e, headers={"Last-Event-ID": "0:cancelled"})

    await cancel_all(e)
    status, text = await freed()
    assert status == 200 and "event: end" in text
