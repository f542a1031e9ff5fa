"""The product on the real node, as ``make demo`` runs it: JupyterHub from the example
``jupyterhub_config.py`` with the builder as a hub-managed service. A user builds the example
repositories (Dockerfile and source-to-image) through the builder's API; the Jobs run buildah
in the builder image on the node, clone from a git server pods reach, and push to the local
registry; the ImageStream gets the pushed digest; the user starts the built image and the
repository's notebook is in it (Jupyter contents API). Real public repositories with only
environment files (tests/data/repos) are detected as environment builds, install from the
test cluster's package index, and the running server has exactly the pinned versions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid

import aiohttp
import pytest
import pytest_asyncio
from hub_harness import run_in_kernel
from kube_helpers import user_pods
from kubernetes_asyncio import client
from node_harness import data_repo

from aicoe_spawner.demo import NAMESPACE, Demo
from aicoe_spawner.devcluster.controlplane import free_port
from aicoe_spawner.devcluster.images import registry_digest

pytestmark = pytest.mark.node

ADMIN_TOKEN = secrets.token_hex(16)
TESTER = f"""
c.JupyterHub.services.append({{"name": "tester", "api_token": {ADMIN_TOKEN!r}}})
c.JupyterHub.load_roles.append({{"name": "tester", "scopes": ["admin:users", "admin:servers",
    "tokens", "read:users"], "services": ["tester"]}})
"""


@pytest_asyncio.fixture(scope="module")
async def demo(node_cluster, package_index, tmp_path_factory):
    demo = Demo(
        node_cluster.plane,
        node_cluster.node,
        tmp_path_factory.mktemp("demo"),
        free_port(),
        extra_config=TESTER,
        extra_env={
            "AICOE_BUILDER_PACKAGE_INDEX_URL": package_index.pip_url,
            "AICOE_BUILDER_PACKAGE_INDEX_TRUSTED_HOST": package_index.trusted_host,
            "AICOE_BUILDER_APT_SOURCES": package_index.apt_line,
        },
    )
    await asyncio.to_thread(demo.start)
    yield demo
    await asyncio.to_thread(demo.stop)


async def hub_api(demo: Demo, method: str, path: str, **kwargs):
    headers = {"Authorization": f"token {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as s:
        async with s.request(method, f"{demo.url}/hub/api{path}", **kwargs) as r:
            return r.status, (await r.json() if r.content_type == "application/json" else None)


async def new_user_token(demo: Demo) -> tuple[str, str]:
    user = f"dev-{uuid.uuid4().hex[:6]}"
    status, _ = await hub_api(demo, "POST", f"/users/{user}")
    assert status == 201
    status, body = await hub_api(demo, "POST", f"/users/{user}/tokens", json={})
    assert status == 201, body
    return user, body["token"]


async def build(demo: Demo, token: str, repo: str, timeout: float = 900) -> dict:
    headers = {"Authorization": f"token {token}"}
    async with aiohttp.ClientSession(headers=headers) as s:
        async with s.post(f"{demo.builder_url}/api/builds", json={"repo": repo, "ref": "v1"}) as r:
            assert r.status in (200, 202), (r.status, await r.text())
            submitted = await r.json()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            async with s.get(f"{demo.builder_url}/api/builds/{submitted['id']}") as r:
                current = await r.json()
            if current["phase"] in ("ready", "failed", "cancelled"):
                break
            await asyncio.sleep(2)
        async with s.get(f"{demo.builder_url}/api/builds/{submitted['id']}/logs") as r:
            current["log"] = await r.text()
    return current


@contextlib.asynccontextmanager
async def running_server(demo: Demo, kube, user: str, image: str):
    """The user's server on ``image``, started from the hub (its pod), stopped at the end."""
    status, body = await hub_api(demo, "POST", f"/users/{user}/server", json={"image": image})
    assert status in (201, 202), body
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status, model = await hub_api(demo, "GET", f"/users/{user}")
        server = model["servers"].get("")
        if server and server["ready"]:
            break
        assert server or model["pending"], f"spawn failed:\n{demo.hub_log.read_text()[-3000:]}"
        await asyncio.sleep(1)
    [pod] = await user_pods(kube, NAMESPACE, user)
    try:
        yield pod
    finally:
        status, _ = await hub_api(demo, "DELETE", f"/users/{user}/server")
        assert status in (202, 204)


async def spawn_and_read(demo: Demo, kube, user: str, token: str, image: str, path: str):
    async with running_server(demo, kube, user, image) as pod:
        headers = {"Authorization": f"token {token}"}
        async with aiohttp.ClientSession(headers=headers) as s:
            async with s.get(f"{demo.url}/user/{user}/api/contents/{path}") as r:
                assert r.status == 200, (r.status, await r.text())
                content = await r.json()
    return pod, content


@pytest.mark.timeout(1200)  # real builds and image pulls on a shared 2-core machine
@pytest.mark.parametrize(
    ("repo", "notebook", "title"),
    [
        ("dockerfile-notebook", "hello.ipynb", "Hello from a Dockerfile build"),
        ("source-notebook", "analysis.ipynb", "Hello from a source-to-image build"),
    ],
)
async def test_build_on_the_node_then_launch_the_built_image(
    demo, node_cluster, node_kube, repo, notebook, title
):
    user, token = await new_user_token(demo)
    result = await build(demo, token, demo.repos[repo])
    assert result["phase"] == "ready", result
    namespace, name_tag = result["image"].split("/", 1)
    stream, tag = name_tag.split(":")
    assert namespace == NAMESPACE

    # The ImageStream carries the digest the registry holds for the pushed image.
    is_ = await client.CustomObjectsApi(node_kube).get_namespaced_custom_object(
        "image.openshift.io", "v1", namespace, "imagestreams", stream
    )
    [status_tag] = [t for t in is_["status"]["tags"] if t["tag"] == tag]
    reference = status_tag["items"][0]["dockerImageReference"]
    registry, repository = reference.split("@")[0].split("/", 1)
    assert registry == node_cluster.node.registry
    assert reference.endswith(registry_digest(registry, repository, tag))

    pod, content = await spawn_and_read(demo, node_kube, user, token, result["image"], notebook)
    assert pod["spec"]["containers"][0]["image"] == reference
    assert content["type"] == "notebook"
    assert title in "".join(content["content"]["cells"][0]["source"])


@pytest.mark.timeout(1500)  # real builds with pip on a shared 2-core machine
@pytest.mark.parametrize(
    ("repo", "decided_by", "pins"),
    [
        (
            "requirements-only",
            ["requirements.txt"],
            {"requests": "2.32.3", "xmltodict": "0.13.0", "diskcache": "5.6.3"},
        ),
        (
            "pipfile-lock",
            ["Pipfile", "Pipfile.lock"],
            {"daiquiri": "2.0.0", "python-json-logger": "0.1.11"},
        ),
    ],
)
async def test_an_environment_build_installs_the_pinned_versions(
    demo, node_kube, repo, decided_by, pins
):
    """The repository URL and a tag, nothing else: detected as an environment build, the
    packages come from the test cluster's index, and the server started from the hub has
    exactly the pinned versions and the repository's files in its home."""
    url = demo.git.add_repo(repo, data_repo(repo))
    user, token = await new_user_token(demo)
    started = time.monotonic()
    result = await build(demo, token, url, timeout=1200)
    print(f"{repo}: environment build {result['phase']} in {time.monotonic() - started:.0f} s")
    assert result["phase"] == "ready", (result["message"], result["log"][-4000:])
    assert (result["strategy"], result["decided_by"]) == ("environment", decided_by)
    assert f"decided by: {' '.join(decided_by)}" in result["log"]
    code = (
        "import importlib.metadata as m, json, os\n"
        f"names = {sorted(pins)!r}\n"
        "print(json.dumps({'versions': {n: m.version(n) for n in names},\n"
        f"  'file': os.path.exists(os.path.expanduser('~/{decided_by[-1]}'))}}))"
    )
    async with running_server(demo, node_kube, user, result["image"]):
        got = json.loads(await run_in_kernel(demo, user, token, code))
    assert got == {"versions": pins, "file": True}
