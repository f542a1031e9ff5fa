"""Who may read a build, and who may start one through the webhook: the builder over real HTTP,
authenticated by a real JupyterHub, configured as the example config ships it (no webhook
secret)."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import uuid

import aiohttp
import pytest_asyncio
from harness.builder import BuilderEnv, BuilderStack, api_call, start_builder_hub, user_tokens
from harness.git import GitServer
from kubernetes_asyncio import client

from aicoe_devcluster import delete_namespace
from aicoe_devcluster.controlplane import free_port

PREFIX = "/services/image-builder/"


@pytest_asyncio.fixture(scope="module")
async def env(kube, control_plane, tmp_path_factory):
    """A hub, the builder without a webhook secret (its default) and a git server. Builds stay
    pending: no job runner, nothing is pushed."""
    tmp_path = tmp_path_factory.mktemp("builder-access")
    namespace = f"t-bacc-{uuid.uuid4().hex[:6]}"
    await client.CoreV1Api(kube).create_namespace({"metadata": {"name": namespace}})
    git = GitServer(tmp_path / "git")
    token = secrets.token_hex(16)
    port = free_port()
    hub = await start_builder_hub(
        control_plane, namespace, tmp_path, token, port, builders=("alice", "bob"), admins=("root",)
    )
    stack = BuilderStack(
        kube,
        namespace,
        "127.0.0.1:9",  # never pushed to: no build runs
        tmp_path,
        token=token,
        hub_url=hub.url,
        port=port,
    )
    tokens = await user_tokens(hub, ("alice", "bob", "root"))
    yield BuilderEnv(
        kube=kube,
        namespace=namespace,
        url=f"http://127.0.0.1:{port}{PREFIX}",
        tokens=tokens,
        git=git,
    )
    await stack.stop()
    await hub.stop()
    git.stop()
    await delete_namespace(kube, namespace)


async def call(e, method, path, user=None, json_body=None, data=None, headers=None):
    token = e.tokens[user] if user else None
    return await api_call(e.url, method, path, token, json_body, data, headers)


async def event_stream_status(e, build_id: str, user: str) -> tuple[int, str]:
    """Status and first bytes of the build's event stream (left open if it streams)."""
    headers = {"Authorization": f"token {e.tokens[user]}"}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        async with s.get(e.url + f"api/builds/{build_id}/events", headers=headers) as r:
            first = await r.content.read(200)
            return r.status, first.decode(errors="replace")


async def build_records(e) -> list[str]:
    """Every build (as a builder admin lists them, whatever stores them) and every Job in the
    builder's namespace."""
    status, listed = await call(e, "GET", "api/builds", "root")
    assert status == 200, listed
    jobs = await client.BatchV1Api(e.kube).list_namespaced_job(e.namespace)
    return sorted(
        [f"build/{b['id']}" for b in listed["builds"]]
        + [f"job/{j.metadata.name}" for j in jobs.items]
    )


async def test_logs_and_events_of_another_users_build_are_not_found(env):
    e = env
    e.git.create_repo("private-nb", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    status, build = await call(
        e, "POST", "api/builds", "alice", {"repo": e.git.url("private-nb"), "ref": "v1"}
    )
    assert status == 202, build
    bid = build["id"]
    for phase in ("pending", "cancelled"):
        # Another user: the logs and the event stream are reported like a missing build.
        status, body = await call(e, "GET", f"api/builds/{bid}/logs", "bob")
        assert status in (403, 404), (phase, status, body)
        status, first = await event_stream_status(e, bid, "bob")
        assert status in (403, 404), (phase, status, first)
        assert "event:" not in first
        # The requester and a builder admin read both.
        for reader in ("alice", "root"):
            status, _ = await call(e, "GET", f"api/builds/{bid}/logs", reader)
            assert status == 200, (phase, reader)
            status, first = await event_stream_status(e, bid, reader)
            assert status == 200 and "event: phase" in first, (phase, reader, first)
        if phase == "pending":
            status, cancelled = await call(e, "DELETE", f"api/builds/{bid}", "alice")
            assert status == 200 and cancelled["phase"] == "cancelled", cancelled


def release_event(e, repo: str, tag: str) -> bytes:
    return json.dumps(
        {
            "action": "published",
            "release": {"tag_name": tag},
            "repository": {"clone_url": e.git.url(repo)},
            "sender": {"login": "mallory"},
        }
    ).encode()


async def test_webhook_is_refused_when_no_secret_is_configured(env):
    e = env
    e.git.create_repo("hooked", {"Dockerfile": "FROM scratch\n"}, tag="v2")
    payload = release_event(e, "hooked", "v2")
    before = await build_records(e)
    # With no secret configured, an attacker signs with the empty key.
    empty_key = "sha256=" + hmac.new(b"", payload, hashlib.sha256).hexdigest()
    for signature in (empty_key, None, "sha256=", ""):
        headers = {"X-GitHub-Event": "release", "Content-Type": "application/json"}
        if signature is not None:
            headers["X-Hub-Signature-256"] = signature
        status, body = await call(e, "POST", "api/webhooks/github", data=payload, headers=headers)
        assert status == 401, (signature, status, body)
    ping = {
        "X-GitHub-Event": "ping",
        "X-Hub-Signature-256": "sha256=" + hmac.new(b"", b"{}", hashlib.sha256).hexdigest(),
    }
    assert (await call(e, "POST", "api/webhooks/github", data=b"{}", headers=ping))[0] == 401
    assert await build_records(e) == before
