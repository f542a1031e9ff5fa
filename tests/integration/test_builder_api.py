"""The builder's HTTP API over real HTTP, authenticated by a real JupyterHub (the builder is
registered as a hub service with custom scopes), against the real API server."""

from __future__ import annotations

import json
import secrets
import uuid

import aiohttp
import pytest
import pytest_asyncio
from harness.builder import (
    BuilderEnv,
    BuilderStack,
    api_call,
    builder_hub,
    github_signature,
    user_tokens,
)
from harness.git import GitServer
from harness.kube import wait_for
from harness.registry import Registry, push_base_image
from kubernetes_asyncio import client

from aicoe_devcluster import delete_namespace
from aicoe_devcluster.controlplane import free_port

pytestmark = pytest.mark.integration
PREFIX = "/services/image-builder/"
SECRET = b"webhook-secret"


@pytest_asyncio.fixture(scope="module")
async def env(kube, control_plane, fake_kubelet, tmp_path_factory):
    """One hub, builder, git server and registry for the module (a hub start costs ~5 s)."""
    tmp_path = tmp_path_factory.mktemp("builder-api")
    namespace = f"t-bapi-{uuid.uuid4().hex[:6]}"
    await client.CoreV1Api(kube).create_namespace({"metadata": {"name": namespace}})
    git = GitServer(tmp_path / "git")
    registry = Registry(tmp_path / "registry")
    base = push_base_image(registry, tmp_path)
    token = secrets.token_hex(16)
    port = free_port()
    hub = builder_hub(
        control_plane,
        namespace,
        tmp_path,
        token,
        port,
        builders=("alice", "bob"),
        admins=("root",),
        viewers=("eve",),
    )
    stack = BuilderStack(
        kube,
        namespace,
        registry.host,
        tmp_path,
        token=token,
        hub_url=hub.url,
        port=port,
        kubelet=fake_kubelet,
        webhook_secret=SECRET,
        max_per_user=2,
        max_total=10,
    )
    await hub.start()  # the builder listens already: the hub need not wait for it
    service, runner = stack.service, stack.runner
    git.create_repo("bad", {"Dockerfile": f"FROM {base}\n"}, tag="v1")
    tokens = await user_tokens(hub, ("alice", "bob", "root", "eve"))
    yield BuilderEnv(
        kube=kube,
        namespace=namespace,
        url=f"http://127.0.0.1:{port}{PREFIX}",
        tokens=tokens,
        git=git,
        base=base,
        service=service,
        runner=runner,
        registry=registry,
        watch=stack.watch,
    )
    await stack.stop()
    await hub.stop()
    registry.stop()
    git.stop()
    await delete_namespace(kube, namespace)


async def call(e, method, path, user=None, json_body=None, data=None, headers=None):
    token = e.tokens[user] if user else None
    return await api_call(e.url, method, path, token, json_body, data, headers)


async def objects(e):
    """Build records, the builder's ConfigMaps (kept logs, webhook deliveries) and Jobs."""
    core, batch = client.CoreV1Api(e.kube), client.BatchV1Api(e.kube)
    records = await client.CustomObjectsApi(e.kube).list_namespaced_custom_object(
        "aicoe-spawner.io", "v1", e.namespace, "imagebuilds"
    )
    cms = await core.list_namespaced_config_map(e.namespace)
    jobs = await batch.list_namespaced_job(e.namespace)
    return (
        sorted(r["metadata"]["name"] for r in records["items"]),
        sorted(c.metadata.name for c in cms.items if c.metadata.name.startswith("imgbuild")),
        [j.metadata.name for j in jobs.items],
    )


def sign(body: bytes, secret: bytes = SECRET) -> str:
    return github_signature(body, secret)


async def test_api_end_to_end(env):
    e = env
    e.git.create_repo("api-nb", {"Dockerfile": f"FROM {e.base}\nRUN echo line-one\n"}, tag="v1")
    repo = e.git.url("api-nb")
    assert (await call(e, "GET", "health"))[0] == 200
    # no token, or a token without the build scope
    assert (await call(e, "POST", "api/builds", json_body={"repo": repo, "ref": "v1"}))[0] == 403
    status, body = await call(e, "POST", "api/builds", "eve", {"repo": repo, "ref": "v1"})
    assert status == 403 and "custom:image-builder:build" in body["message"]
    e.runner.paused = True
    status, build = await call(e, "POST", "api/builds", "alice", {"repo": repo, "ref": "v1"})
    assert status == 202, build
    assert build["phase"] == "pending" and build["image"] == f"{e.namespace}/api-nb:v1"
    status, again = await call(e, "POST", "api/builds", "alice", {"repo": repo, "ref": "v1"})
    assert (status, again["id"]) == (200, build["id"])
    bid = build["id"]
    # another user's build is invisible; an admin sees it
    assert (await call(e, "GET", f"api/builds/{bid}", "bob"))[0] == 404
    assert (await call(e, "DELETE", f"api/builds/{bid}", "bob"))[0] == 404
    assert (await call(e, "GET", f"api/builds/{bid}", "root"))[0] == 200
    assert [b["id"] for b in (await call(e, "GET", "api/builds", "alice"))[1]["builds"]] == [bid]
    assert (await call(e, "GET", "api/builds", "bob"))[1]["builds"] == []

    # a new stream is not in the catalog until a tag of it is ready: while its Job waits to
    # run, its requester sees the phase in the builder
    async def listed():
        _, imgs = await call(e, "GET", "api/images", "alice")
        return [i for i in imgs["images"] if i["image"].endswith("api-nb:v1")]

    assert await listed() == []
    assert (await call(e, "GET", f"api/builds/{bid}", "alice"))[1]["phase"] == "pending"

    # events: read until the first phase event, then reconnect with Last-Event-ID
    headers = {"Authorization": f"token {e.tokens['alice']}"}
    async with aiohttp.ClientSession() as s:
        async with s.get(e.url + f"api/builds/{bid}/events", headers=headers) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            first_id = None
            async for raw in r.content:
                line = raw.decode().strip()
                if line.startswith("id: "):
                    first_id = line[4:]
                if line.startswith("event: phase"):
                    break
    assert first_id == "0:pending"
    e.runner.paused = False
    events = []
    async with aiohttp.ClientSession() as s:
        async with s.get(
            e.url + f"api/builds/{bid}/events", headers={**headers, "Last-Event-ID": first_id}
        ) as r:
            async for raw in r.content:
                events.append(raw.decode().rstrip("\n"))
    text = "\n".join(events)
    assert "event: end" in text and "pending" not in text.split("event: phase", 1)[-1][:40]
    assert '"phase": "ready"' in text and "line-one" in text
    # every log line is sent once, in order: ids count the lines sent so far
    line_ids = [
        int(events[i - 2].removeprefix("id: ").split(":")[0])
        for i, line in enumerate(events)
        if line.startswith('data: {"line"')
    ]
    assert line_ids == list(range(1, len(line_ids) + 1)), line_ids
    status, final = await call(e, "GET", f"api/builds/{bid}", "alice")
    assert final["phase"] == "ready" and final["digest"].startswith("sha256:")
    status, logs = await call(e, "GET", f"api/builds/{bid}/logs", "alice")
    assert status == 200 and "==> pushed" in logs
    # events after the end replay and close; they never start a build
    before = await objects(e)
    status, _ = await call(e, "GET", f"api/builds/{bid}/events", "alice")
    assert status == 200 and await objects(e) == before
    _, imgs = await call(e, "GET", "api/images", "alice")
    ready = next(i for i in imgs["images"] if i["image"].endswith("api-nb:v1"))
    assert ready["phase"] == "ready" and ready["digest"] == final["digest"]
    status, metrics = await call(e, "GET", "metrics")
    assert 'aicoe_builder_builds_total{phase="ready"}' in metrics


async def test_cancel_limits_and_webhook(env):
    e = env
    e.runner.paused = True
    repos = []
    for name in ("c1", "c2", "c3"):
        e.git.create_repo(name, {"Dockerfile": f"FROM {e.base}\n"}, tag="v1")
        repos.append(e.git.url(name))
    s1, b1 = await call(e, "POST", "api/builds", "alice", {"repo": repos[0], "ref": "v1"})
    s2, b2 = await call(e, "POST", "api/builds", "alice", {"repo": repos[1], "ref": "v1"})
    assert (s1, s2) == (202, 202)
    before = await objects(e)
    status, body = await call(e, "POST", "api/builds", "alice", {"repo": repos[2], "ref": "v1"})
    assert status == 429 and "limit 2" in body["message"]
    assert await objects(e) == before
    # cancel frees a slot
    status, cancelled = await call(e, "DELETE", f"api/builds/{b1['id']}", "alice")
    assert status == 200 and cancelled["phase"] == "cancelled"
    assert (await call(e, "POST", "api/builds", "alice", {"repo": repos[2], "ref": "v1"}))[0] == 202
    # admin cancels someone else's build
    assert (await call(e, "DELETE", f"api/builds/{b2['id']}", "root"))[1]["phase"] == "cancelled"

    # webhook: unsigned / badly signed -> 401, nothing created
    e.git.create_repo("hook", {"Dockerfile": f"FROM {e.base}\n"}, tag="v9")
    payload = json.dumps(
        {
            "action": "published",
            "release": {"tag_name": "v9"},
            "repository": {"clone_url": e.git.url("hook")},
            "sender": {"login": "octo"},
        }
    ).encode()
    before = await objects(e)
    hdr = {"X-GitHub-Event": "release", "Content-Type": "application/json"}
    assert (await call(e, "POST", "api/webhooks/github", data=payload, headers=hdr))[0] == 401
    bad = {**hdr, "X-Hub-Signature-256": sign(payload, b"wrong")}
    assert (await call(e, "POST", "api/webhooks/github", data=payload, headers=bad))[0] == 401
    assert await objects(e) == before
    good = {**hdr, "X-Hub-Signature-256": sign(payload), "X-GitHub-Delivery": "d-1"}
    status, build = await call(e, "POST", "api/webhooks/github", data=payload, headers=good)
    assert status == 202 and build["requester"] == "github:octo" and build["ref"] == "v9"
    ping = {"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(b"{}")}
    assert (await call(e, "POST", "api/webhooks/github", data=b"{}", headers=ping))[0] == 202


async def test_images_are_served_from_the_watch_cache(env):
    """GET api/images reads the shared ImageStream watch, rendered once per catalog change:
    no API request per GET, one ETag until the catalog changes (and 304 for it)."""
    e = env
    headers = {"Authorization": f"token {e.tokens['alice']}"}
    async with aiohttp.ClientSession() as s:
        async with s.get(e.url + "api/images", headers=headers) as r:
            assert r.status == 200
            etag, first = r.headers["ETag"], await r.read()
        requests = e.watch.api_requests
        for _ in range(20):
            async with s.get(e.url + "api/images", headers=headers) as r:
                assert (r.status, r.headers["ETag"], await r.read()) == (200, etag, first)
        assert e.watch.api_requests == requests
        async with s.get(e.url + "api/images", headers={**headers, "If-None-Match": etag}) as r:
            assert r.status == 304
        # a catalog change is served at once, with a new ETag
        await client.CustomObjectsApi(e.kube).create_namespaced_custom_object(
            "image.openshift.io",
            "v1",
            e.namespace,
            "imagestreams",
            {
                "apiVersion": "image.openshift.io/v1",
                "kind": "ImageStream",
                "metadata": {
                    "name": "cache-probe",
                    "labels": {"opendatahub.io/notebook-image": "true"},
                },
                "spec": {"tags": [{"name": "v1", "from": {"kind": "DockerImage", "name": "x"}}]},
            },
        )

        async def changed():
            async with s.get(e.url + "api/images", headers=headers) as r:
                body = await r.json()
                return r.headers["ETag"] != etag and any(
                    i["image"] == f"{e.namespace}/cache-probe:v1" for i in body["images"]
                )

        assert await wait_for(changed)


BAD_HTTP = [
    ({"repo": "http://127.0.0.2/x.git", "ref": "v1"}, 400),  # loopback not allowlisted
    ({"repo": "https://169.254.169.254/latest", "ref": "v1"}, 400),
    ({"repo": "file:///etc/passwd", "ref": "v1"}, 400),
    ({"repo": "ext::sh -c id", "ref": "v1"}, 400),
    ({"repo": "GIT", "ref": "--upload-pack=touch /tmp/x"}, 400),
    ({"repo": "GIT", "ref": "v1", "strategy": "magic"}, 400),
    ({"repo": "GIT", "ref": "v1", "dockerfile": "../x"}, 400),
    ({"repo": "GIT", "ref": "v1", "context_dir": "a/../../b"}, 400),
    ({"repo": "GIT", "ref": "v1", "extra": True}, 400),
    ({"repo": "GIT", "ref": "no-such-tag"}, 422),
    (b"{not json", 400),
    (b"x" * (10 << 20), 413),
]


@pytest.mark.parametrize(("body", "code"), BAD_HTTP, ids=[str(i) for i in range(len(BAD_HTTP))])
async def test_bad_http_inputs_create_nothing(env, body, code):
    e = env
    before = await objects(e)
    if isinstance(body, dict):
        body = {k: (e.git.url("bad") if v == "GIT" else v) for k, v in body.items()}
        status, reply = await call(e, "POST", "api/builds", "alice", body)
    else:
        status, reply = await call(e, "POST", "api/builds", "alice", data=body)
    assert status == code, reply
    assert isinstance(reply, dict) and reply["message"]
    assert await objects(e) == before


async def test_environment_files_are_detected_and_bad_ones_refused(env):
    """A repository with only requirements.txt is an environment build (the record and the
    Job say which file decided it); a runtime.txt naming Python 2.7 is refused at request
    time naming the file and the versions offered, and creates nothing."""
    e = env
    e.git.create_repo(
        "env-py2",
        {"runtime.txt": "python-2.7\n", "requirements.txt": "six\n", "nb.ipynb": "{}\n"},
        tag="v1",
    )
    before = await objects(e)
    status, body = await call(
        e, "POST", "api/builds", "alice", {"repo": e.git.url("env-py2"), "ref": "v1"}
    )
    assert status == 422, body
    assert body["field"] == "runtime.txt"
    assert "Python 2.7 is not offered" in body["message"]
    assert "(versions offered: 3.11, 3.12, 3.13)" in body["message"]
    assert await objects(e) == before
    e.git.create_repo(
        "env-req", {"requirements.txt": "requests==2.32.3\n", "nb.ipynb": "{}\n"}, tag="v1"
    )
    e.runner.paused = True
    try:
        status, build = await call(
            e, "POST", "api/builds", "alice", {"repo": e.git.url("env-req"), "ref": "v1"}
        )
        assert status == 202, build
        assert (build["strategy"], build["decided_by"]) == ("environment", ["requirements.txt"])
        assert "detected: environment build from requirements.txt" in build["notes"]
        record = await client.CustomObjectsApi(e.kube).get_namespaced_custom_object(
            "aicoe-spawner.io", "v1", e.namespace, "imagebuilds", f"imgbuild-{build['id']}"
        )
        assert record["spec"]["decided_by"] == ["requirements.txt"]
        job = await client.BatchV1Api(e.kube).read_namespaced_job(
            f"imgbuild-{build['id']}", e.namespace
        )
        build_env = {v.name: v.value for v in job.spec.template.spec.init_containers[0].env}
        assert build_env["STRATEGY"] == "environment"
        assert build_env["DECIDED_BY"] == "requirements.txt"
        generated = build_env["GENERATED_DOCKERFILE"].splitlines()
        assert generated.index(
            "COPY --chown=1000:100 requirements.txt /home/jovyan/requirements.txt"
        ) < generated.index("COPY --chown=1000:100 . /home/jovyan/")
        assert (await call(e, "DELETE", f"api/builds/{build['id']}", "alice"))[0] == 200

    finally:
        e.runner.paused = False
