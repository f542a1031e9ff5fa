"""What the builder shows and how its responses may be used (issue 18, S11 and S12), over real
HTTP: a real JupyterHub (spawner and builder service, users in groups), the builder in-process,
ImageStreams in the real API server.

- ``GET api/images`` lists what the user's own spawn page offers: no hidden image, no image
  the user's groups' policies leave out (S11);
- every response of the builder -- pages, API, errors, static files, redirects -- forbids
  framing and MIME sniffing (S12)."""

from __future__ import annotations

import re
import secrets
import uuid

import aiohttp
import pytest
import pytest_asyncio
from harness.builder import (
    SERVICE_PREFIX,
    BuilderEnv,
    BuilderStack,
    api_call,
    builder_roles,
    builder_service_config,
    user_tokens,
)
from harness.helm_chart import by_kind, render
from harness.hub import Hub
from harness.kube import create_imagestream
from kubernetes_asyncio import client

from aicoe_devcluster import delete_namespace
from aicoe_devcluster.controlplane import free_port
from aicoe_spawner.builder.catalog_view import ImagePolicies

A = "opendatahub.io/"
# The spawner's policies, given to the hub and (as the chart does) to the builder.
DEFAULT_POLICY = {"images": ["minimal", "datascience", "tucked-away"]}
GROUP_POLICIES = {"gpu-team": {"images": ["cuda-*"], "max_gpus": 1}}
USERS = {"gail": ["gpu-team"], "nils": []}


@pytest_asyncio.fixture(scope="module")
async def env(kube, control_plane, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("builder-exposure")
    namespace = f"t-bexp-{uuid.uuid4().hex[:6]}"
    await client.CoreV1Api(kube).create_namespace({"metadata": {"name": namespace}})
    await create_imagestream(kube, namespace, "minimal", {"1.0": {f"{A}default-image": "true"}})
    await create_imagestream(kube, namespace, "datascience", {"1.0": {}, "2.0": {}})
    await create_imagestream(kube, namespace, "cuda-torch", {"1.0": {}})
    await create_imagestream(kube, namespace, "cuda-jax", {"0.4": {}})
    await create_imagestream(
        kube,
        namespace,
        "tucked-away",
        {"1.0": {}},
        annotations={f"{A}notebook-image-hidden": "true"},
    )
    await create_imagestream(kube, namespace, "nobodys", {"1.0": {}})  # no policy allows it
    token, port = secrets.token_hex(16), free_port()
    spawner_config = (
        f"\nc.AICoESpawner.default_policy = {DEFAULT_POLICY!r}"
        f"\nc.AICoESpawner.group_policies = {GROUP_POLICIES!r}\n"
    )
    hub = Hub(
        tmp_path / "hub",
        control_plane.kubeconfig,
        namespace,
        free_port(),
        builder_service_config(token, port)
        + builder_roles(builders=tuple(USERS), admins=("root",))
        + spawner_config,
    )
    stack = BuilderStack(
        kube,
        namespace,
        "127.0.0.1:9",  # nothing is built here
        tmp_path,
        token=token,
        hub_url=hub.url,
        port=port,
        app_options={"image_policies": ImagePolicies(DEFAULT_POLICY, GROUP_POLICIES)},
    )
    await hub.start()  # after the builder listens: the hub waits for its services
    for user, groups in USERS.items():
        await hub.ensure_user(user, groups)
    origin = f"http://127.0.0.1:{port}"
    tokens = await user_tokens(hub, (*USERS, "root"))
    yield BuilderEnv(
        kube=kube,
        namespace=namespace,
        hub=hub,
        origin=origin,
        url=origin + SERVICE_PREFIX,
        tokens=tokens,
    )
    await stack.stop()
    await hub.stop()
    await delete_namespace(kube, namespace)


async def listed_streams(e, user: str) -> tuple[set[str], list[dict]]:
    status, body = await api_call(e.url, "GET", "api/images", e.tokens[user])
    assert status == 200, body
    return {i["image"].rpartition(":")[0] for i in body["images"]}, body["images"]


async def spawn_page_streams(e, user: str) -> set[str]:
    """The image cards of the user's own spawn page."""
    web = await e.hub.login(user)
    try:
        page = await web.spawn_page(user)
    finally:
        await web.close()
    # cards sent in <noscript> chunks (the lean page) are escaped text
    return set(re.findall(r"data-stream=(?:\"|&#34;|&quot;)([^\"&]+)", page))


async def test_images_are_listed_as_the_users_spawn_page_offers_them(env):
    e = env
    ns = e.namespace
    wanted = {
        "gail": {f"{ns}/minimal", f"{ns}/datascience", f"{ns}/cuda-torch", f"{ns}/cuda-jax"},
        "nils": {f"{ns}/minimal", f"{ns}/datascience"},
    }
    for user, streams in wanted.items():
        listed, rows = await listed_streams(e, user)
        assert listed == streams, (user, listed)
        assert listed == await spawn_page_streams(e, user)
        assert not any(r["hidden"] for r in rows)
        assert all(r["digest"].startswith("sha256:") for r in rows)
    # one user's list is not another's (the rendering is cached per set of image patterns)
    listed, _ = await listed_streams(e, "nils")
    assert f"{ns}/cuda-torch" not in listed
    # builder admins see the whole catalog, hidden images marked
    listed, rows = await listed_streams(e, "root")
    assert listed == wanted["gail"] | {f"{ns}/tucked-away", f"{ns}/nobodys"}
    assert {r["image"] for r in rows if r["hidden"]} == {f"{ns}/tucked-away:1.0"}


def test_the_chart_gives_the_builder_the_spawners_policies():
    spawner = {"default_policy": DEFAULT_POLICY, "group_policies": GROUP_POLICIES}
    for values, wanted in (
        ({"hub": {"config": {"AICoESpawner": spawner}}}, ImagePolicies(**spawner)),
        (None, ImagePolicies()),
    ):
        docs = render(values=values)
        env = {
            e["name"]: e
            for d in by_kind(docs, "Deployment")
            for c in d["spec"]["template"]["spec"]["containers"]
            for e in c.get("env", [])
        }
        # from the ConfigMap the chart makes of hub.config.AICoESpawner (the builder chart
        # cannot read the hub's values)
        ref = env["AICOE_BUILDER_IMAGE_POLICY"]["valueFrom"]["configMapKeyRef"]
        (config_map,) = [
            d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == ref["name"]
        ]
        assert ImagePolicies.from_json(config_map["data"][ref["key"]]) == wanted


SECURITY = {
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


@pytest.mark.parametrize(
    ("method", "path", "token", "status"),
    [
        ("GET", "", "nils", 200),  # the page
        ("GET", "", None, 302),  # to the hub's login
        ("GET", "api/builds", "nils", 200),
        ("GET", "api/builds", None, 302),  # web.authenticated: to the login
        ("GET", "api/builds/no-such-build", "nils", 404),
        ("GET", "api/images", "gail", 200),
        ("POST", "api/webhooks/github", None, 401),
        ("GET", "oauth_callback", None, 400),
        ("GET", "health", None, 200),
        ("PUT", "health", None, 405),
        ("GET", "metrics", None, 200),
        ("GET", "static/builder.js", None, 200),
        ("GET", "static/no-such-file.js", None, 404),
        ("GET", "no/such/page", "nils", 404),
        ("GET", "/elsewhere", None, 404),  # outside the service's prefix
    ],
)
async def test_every_response_forbids_framing_and_sniffing(env, method, path, token, status):
    url = env.origin + path if path.startswith("/") else env.url + path
    headers = {"Authorization": f"token {env.tokens[token]}"} if token else {}
    async with aiohttp.ClientSession() as s:
        async with s.request(method, url, headers=headers, allow_redirects=False) as r:
            assert r.status == status, (r.status, await r.text())
            for name, value in SECURITY.items():
                assert r.headers.get(name) == value, (name, dict(r.headers))
