"""Who may publish to an ImageStream and tag (issue 18: S1, S7, S10, S13), over real HTTP
through a real JupyterHub to the builder, against the real API server and a Git server on
loopback. No build runs: the test plays the Job controller (``complete_job``) where a build
has to finish, so each attack is a few requests."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import replace

import pytest
import pytest_asyncio
from harness.builder import (
    BuilderEnv,
    BuilderStack,
    api_call,
    builder_hub,
    builder_state,
    user_tokens,
)
from harness.git import GitServer, push_unpublished_ref
from harness.jobs import complete_job, digest_of
from harness.kube import wait_for
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from aicoe_devcluster import delete_namespace
from aicoe_devcluster.controlplane import free_port
from aicoe_spawner.builder.__main__ import Settings, build_service
from aicoe_spawner.builder.config import settings_from_env
from aicoe_spawner.builder.naming import hashed_stream_name, stream_name_for
from aicoe_spawner.builder.requests import BuildRequestError

pytestmark = pytest.mark.integration
IMAGE_API = ("image.openshift.io", "v1", "imagestreams")
USERS = ("alice", "bob", "carol", "root")
PUBLISHER = "aicoe-spawner.io/publisher"


@pytest_asyncio.fixture(scope="module")
async def env(kube, control_plane, tmp_path_factory):
    """One hub and builder (no job runner: the test finishes Jobs) and a git server."""
    tmp_path = tmp_path_factory.mktemp("builder-publish")
    namespace = f"t-bpub-{uuid.uuid4().hex[:6]}"
    await client.CoreV1Api(kube).create_namespace({"metadata": {"name": namespace}})
    git = GitServer(tmp_path / "git")
    token, port = secrets.token_hex(16), free_port()
    hub = builder_hub(
        control_plane,
        namespace,
        tmp_path,
        token,
        port,
        builders=("alice", "bob", "carol"),
        admins=("root",),
    )
    stack = BuilderStack(
        kube,
        namespace,
        "registry.local:5000",
        tmp_path,
        token=token,
        hub_url=hub.url,
        port=port,
        max_per_user=20,
        max_total=60,
    )
    await hub.start()  # the builder listens already: the hub need not wait for it
    tokens = await user_tokens(hub, USERS)
    yield BuilderEnv(
        kube=kube,
        namespace=namespace,
        url=stack_url(port),
        git=git,
        tokens=tokens,
        service=stack.service,
    )
    await stack.stop()
    await hub.stop()
    git.stop()
    await delete_namespace(kube, namespace)


def stack_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/services/image-builder/"


async def call(e, method, path, user, json_body=None):
    return await api_call(e.url, method, path, e.tokens[user], json_body)


async def build(e, user, repo, ref="v1", **options):
    return await call(
        e, "POST", "api/builds", user, {"repo": e.git.url(repo), "ref": ref, **options}
    )


async def state(e):
    return await builder_state(e.service, e.kube, e.namespace)


async def stream(e, name):
    try:
        return await client.CustomObjectsApi(e.kube).get_namespaced_custom_object(
            IMAGE_API[0], IMAGE_API[1], e.namespace, IMAGE_API[2], name
        )
    except ApiException as err:
        if err.status == 404:
            return None
        raise


async def phase(e, user, build_id, *phases, timeout=20):
    async def reached():
        status, b = await call(e, "GET", f"api/builds/{build_id}", user)
        assert status == 200, b
        return b if b["phase"] in phases else None

    return await wait_for(reached, timeout=timeout, interval=0.1)


async def ready(e, user, b):
    """Finish the Job of build ``b`` with a digest, as the Job controller does."""
    await complete_job(e.kube, e.namespace, b["id"], digest_of(b["id"]))
    return await phase(e, user, b["id"], "ready")


async def images(e, user="bob"):
    status, body = await call(e, "GET", "api/images", user)
    assert status == 200, body
    return {i["image"] for i in body["images"]}


async def jobs(e):
    return (await state(e))[1]


# -- S1: another user's published tag ---------------------------------------------------


async def test_another_users_published_tag_is_never_replaced(env):
    e = env
    files = {"Dockerfile": "FROM scratch\n", "sub/Dockerfile": "FROM scratch\n"}
    e.git.create_repo("pub-owner", files, tag="v1")
    status, first = await build(e, "alice", "pub-owner")
    assert status == 202, first
    first = await ready(e, "alice", first)
    published = await stream(e, "pub-owner")
    assert published["metadata"]["annotations"][PUBLISHER] == "alice"

    before = await state(e)
    for options, field in (
        ({"strategy": "source", "base_image": "quay.io/bob/evil:1"}, "strategy"),
        ({"dockerfile": "sub/Dockerfile"}, "dockerfile"),
        ({"context_dir": "sub"}, "context_dir"),
    ):
        status, reply = await build(e, "bob", "pub-owner", **options)
        assert (status, reply.get("field")) == (409, field), reply
        assert reply["message"].startswith(f"{field}: ") and "alice" in reply["message"]
        assert "only the publisher may change it" in reply["message"]
    assert await state(e) == before

    # the same content: bob follows alice's build (a record of his own, her digest)
    status, same = await build(e, "bob", "pub-owner")
    assert status == 200 and same["requester"] == "bob" and same["phase"] == "ready"
    assert same["digest"] == first["digest"]

    # a new tag of her stream: the repository's defaults, not bob's options
    e.git.update_repo("pub-owner", {"README": "v2\n"}, tag="v2")
    status, reply = await build(e, "bob", "pub-owner", "v2", context_dir="sub")
    assert (status, reply.get("field")) == (409, "context_dir"), reply
    status, v2 = await build(e, "bob", "pub-owner", "v2")
    assert status == 202 and v2["image"] == f"{e.namespace}/pub-owner:v2", v2

    # the publisher and a builder admin may change it
    status, mine = await build(e, "alice", "pub-owner", dockerfile="sub/Dockerfile")
    assert status == 202 and mine["id"] != first["id"], mine
    status, admin = await build(e, "root", "pub-owner", context_dir="sub")
    assert status == 202, admin
    for user, b in (("bob", v2), ("alice", mine), ("root", admin)):
        assert (await call(e, "DELETE", f"api/builds/{b['id']}", user))[0] == 200


async def test_pull_request_refs_and_unadvertised_commits_are_never_published(env):
    e = env
    tagged = e.git.create_repo("pub-pr", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    old = e.git.update_repo("pub-pr", {"README": "no branch or tag points here\n"})
    tip = e.git.update_repo("pub-pr", {"README": "newer\n"})
    fork = push_unpublished_ref(
        e.git, "pub-pr", "refs/pull/1/head", {"Dockerfile": "FROM scratch\nRUN evil\n"}
    )
    before = await state(e)
    for ref in ("refs/pull/1/head", fork, old):
        status, reply = await build(e, "bob", "pub-pr", ref)
        assert (status, reply.get("field")) == (422, "ref"), (ref, reply)
        assert reply["message"].startswith("ref: ")
    assert await state(e) == before
    # the tip of a branch or tag is what the repository publishes
    for sha in (tip, tagged):
        status, b = await build(e, "bob", "pub-pr", sha)
        assert status == 202 and b["commit"] == sha, b
        assert (await call(e, "DELETE", f"api/builds/{b['id']}", "bob"))[0] == 200


# -- S10: names ------------------------------------------------------------------------


async def test_a_repositorys_default_names_cannot_be_squatted(env):
    e = env
    victim = e.git.url("alice/tools")
    short, hashed = stream_name_for(victim), hashed_stream_name(victim)
    e.git.create_repo("bob/squat", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    e.git.create_repo(
        "bob/squat2",
        {
            "Dockerfile": "FROM scratch\n",
            ".aicoe-ci.yaml": f"build:\n  registry-project: {hashed}\n",
        },
        tag="v1",
    )
    status, by_name = await build(e, "bob", "bob/squat", name=short)
    assert status == 202 and by_name["image"] == f"{e.namespace}/bob--{short}:v1", by_name
    status, by_project = await build(e, "bob", "bob/squat2")
    assert status == 202, by_project
    assert by_project["image"] == f"{e.namespace}/bob-squat2---{hashed}:v1"

    e.git.create_repo("alice/tools", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    status, own = await build(e, "alice", "alice/tools")
    assert status == 202 and own["image"] == f"{e.namespace}/{short}:v1", own
    for user, b in (("bob", by_name), ("bob", by_project), ("alice", own)):
        assert (await call(e, "DELETE", f"api/builds/{b['id']}", user))[0] == 200


# -- S13: the publisher's cancel -------------------------------------------------------


async def test_the_publishers_cancel_ends_the_build_for_its_followers(env):
    e = env
    e.git.create_repo("pub-cancel", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    status, owner = await build(e, "alice", "pub-cancel")
    assert status == 202
    status, follower = await build(e, "bob", "pub-cancel")
    assert status == 200 and follower["id"] != owner["id"] and follower["phase"] == "pending"
    job = f"imgbuild-{owner['id']}"
    assert job in await jobs(e)

    status, cancelled = await call(e, "DELETE", f"api/builds/{owner['id']}", "alice")
    assert status == 200 and cancelled["phase"] == "cancelled"
    ended = await phase(e, "bob", follower["id"], "cancelled", "ready", "failed")
    assert ended["phase"] == "cancelled" and "alice" in ended["message"], ended
    assert job not in await jobs(e)
    # a cancelled first build leaves no stream
    assert await stream(e, "pub-cancel") is None

    # a follower's cancel ends only their own record
    e.git.create_repo("pub-cancel2", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    _, owner = await build(e, "alice", "pub-cancel2")
    _, follower = await build(e, "bob", "pub-cancel2")
    assert (await call(e, "DELETE", f"api/builds/{follower['id']}", "bob"))[1]["phase"] == (
        "cancelled"
    )
    assert (await call(e, "GET", f"api/builds/{owner['id']}", "alice"))[1]["phase"] == "pending"
    assert f"imgbuild-{owner['id']}" in await jobs(e)
    await ready(e, "alice", owner)


# -- S7: catalog flooding ----------------------------------------------------------------


async def test_the_catalog_shows_a_stream_once_it_is_ready_and_nothing_of_an_aborted_one(env):
    e = env
    e.git.create_repo("pub-new", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    shown = await images(e)
    status, b = await build(e, "alice", "pub-new")
    assert status == 202
    assert await stream(e, "pub-new") is not None
    assert await images(e, "bob") == shown and await images(e, "alice") == shown
    await ready(e, "alice", b)

    async def listed():
        return f"{e.namespace}/pub-new:v1" in await images(e)

    await wait_for(listed, timeout=10)

    # request and cancel, again and again: no card, no stream left
    shown, streams = await images(e), (await state(e))[2].keys()
    for i in range(5):
        e.git.create_repo(f"pub-flood-{i}", {"Dockerfile": "FROM scratch\n"}, tag="v1")
        status, b = await build(e, "bob", f"pub-flood-{i}")
        assert status == 202
        assert (await call(e, "DELETE", f"api/builds/{b['id']}", "bob"))[1]["phase"] == (
            "cancelled"
        )
    assert (await state(e))[2].keys() == streams
    assert await images(e) == shown

    # a first build that fails leaves nothing either
    e.git.create_repo("pub-fails", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    status, b = await build(e, "bob", "pub-fails")
    assert status == 202 and await stream(e, "pub-fails") is not None
    await client.BatchV1Api(e.kube).delete_namespaced_job(
        f"imgbuild-{b['id']}", e.namespace, propagation_policy="Background"
    )  # the Job gone before its result was read: the build fails
    assert (await phase(e, "bob", b["id"], "failed"))["phase"] == "failed"
    assert await stream(e, "pub-fails") is None
    assert await images(e) == shown


async def test_streams_per_requester_are_limited(env):
    e = env
    limits = e.service.limits
    e.service.limits = replace(limits, image_streams_per_user=2)
    try:
        for name in ("lim-1", "lim-2", "lim-3"):
            e.git.create_repo(name, {"Dockerfile": "FROM scratch\n"}, tag="v1")
        status, first = await build(e, "carol", "lim-1")
        assert status == 202
        status, second = await build(e, "carol", "lim-2")
        assert status == 202
        before = await state(e)
        status, reply = await build(e, "carol", "lim-3")
        assert (status, reply.get("field")) == (429, "limit"), reply
        assert "carol has published 2 image streams (limit 2)" in reply["message"]
        assert await state(e) == before
        # another tag of a stream of hers is no new stream; others are not limited by hers
        e.git.update_repo("lim-1", {"README": "2\n"}, tag="v2")
        status, again = await build(e, "carol", "lim-1", "v2")
        assert status == 202, again
        status, other = await build(e, "bob", "lim-3")
        assert status == 202, other
        # a cancelled first build frees its stream
        assert (await call(e, "DELETE", f"api/builds/{second['id']}", "carol"))[0] == 200
        status, third = await build(e, "carol", "lim-2", name="mine")
        assert status == 202, third
        for user, b in (("carol", first), ("carol", again), ("bob", other), ("carol", third)):
            await call(e, "DELETE", f"api/builds/{b['id']}", user)
    finally:
        e.service.limits = limits


def test_the_stream_limit_is_configured_by_environment():
    settings = settings_from_env({"AICOE_BUILDER_MAX_IMAGE_STREAMS_PER_USER": "7"})
    assert settings.max_image_streams_per_user == 7
    assert settings_from_env({}).max_image_streams_per_user == 20


# -- the OpenShift backend: the same rule before a Build exists -------------------------


async def test_openshift_builds_never_publish_another_users_tag(kube, namespace, tmp_path):
    git = GitServer(tmp_path / "git")
    settings = Settings(
        namespace=namespace,
        registry="image-registry.openshift-image-registry.svc:5000",
        allowed_hosts=(),
        private_hosts=("127.0.0.1",),
        allow_http=True,
        backend="openshift",
    )
    service = build_service(kube, settings)
    custom = client.CustomObjectsApi(kube)

    async def builds():
        listed = await custom.list_namespaced_custom_object(
            "build.openshift.io", "v1", namespace, "builds"
        )
        return [b["metadata"]["name"] for b in listed["items"]]

    try:
        git.create_repo("os-owner", {"Dockerfile": "FROM scratch\n", "sub/x": "x\n"}, tag="v1")
        body = {"repo": git.url("os-owner"), "ref": "v1"}
        status, owner = await service.submit(body, "alice")
        assert status == 202 and await builds() == [f"imgbuild-{owner.id}"]
        with pytest.raises(BuildRequestError) as info:
            await service.submit({**body, "context_dir": "sub", "dockerfile": "sub/x"}, "bob")
        assert (info.value.status, info.value.field) == (409, "dockerfile")
        assert await builds() == [f"imgbuild-{owner.id}"]
        status, follower = await service.submit(body, "bob")
        assert status == 200 and follower.spec.job_id == owner.id
        assert await builds() == [f"imgbuild-{owner.id}"]
    finally:
        await service.stop()
        git.stop()
