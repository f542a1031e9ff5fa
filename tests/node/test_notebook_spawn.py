"""Spawning on the real node: the hub's pod is scheduled, runs the notebook image at its
digest, JupyterLab loads in chromium, and the container sees exactly the env the user typed;
stopping lets the garbage collector remove the secret-env Secret; a GPU spawn on this GPU-less
node fails with the scheduler's reason."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from harness.browser import chromium, login, screenshot
from harness.hub import Hub, run_in_kernel
from harness.kube import create_imagestream, user_pods, wait_for
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from aicoe_devcluster import delete_namespace

pytestmark = pytest.mark.node

A = "opendatahub.io/"
PLAIN = "$(HOME) and $$ {username} {braces} ünïcødé ✓ 'quoted' \"double\""
SECRET = f"s3cr3t-{uuid.uuid4().hex}"


def hub_config(node_ip: str, start_timeout: int) -> str:
    return f"""
    c.JupyterHub.hub_ip = {node_ip!r}          # pods call the hub API on the node IP
    c.JupyterHub.hub_connect_ip = {node_ip!r}
    c.KubeSpawner.start_timeout = {start_timeout}
    c.KubeSpawner.http_timeout = 120
    c.Spawner.default_url = "/lab"
    c.AICoESpawner.max_gpus = 1
    """


@pytest_asyncio.fixture(scope="module")
async def notebook_ns(node_cluster, node_kube):
    """A namespace with one ImageStream whose tag points at the notebook image's digest."""
    ns = f"nb-{uuid.uuid4().hex[:6]}"
    await client.CoreV1Api(node_kube).create_namespace({"metadata": {"name": ns}})
    ref = node_cluster.node.images["notebook"]
    stream = await create_imagestream(
        node_kube,
        ns,
        "notebook",
        {"v1": {f"{A}notebook-python-dependencies": '[{"name":"JupyterLab","version":"4"}]'}},
        annotations={f"{A}notebook-image-name": "Notebook"},
        ready=[],
    )
    assert stream
    await client.CustomObjectsApi(node_kube).patch_namespaced_custom_object_status(
        "image.openshift.io",
        "v1",
        ns,
        "imagestreams",
        "notebook",
        {"status": {"tags": [{"tag": "v1", "items": [{"dockerImageReference": ref}]}]}},
        _content_type="application/merge-patch+json",
    )
    yield ns
    await delete_namespace(node_kube, ns, timeout=120)


async def start_hub(node_cluster, ns: str, workdir: Path, start_timeout: int) -> Hub:
    hub = Hub(
        workdir,
        node_cluster.plane.kubeconfig,
        ns,
        8888,
        hub_config(node_cluster.node.node_ip, start_timeout),
    )
    return await hub.start()


@pytest_asyncio.fixture(scope="module")
async def hub(node_cluster, notebook_ns, tmp_path_factory):
    hub = await start_hub(node_cluster, notebook_ns, tmp_path_factory.mktemp("hub"), 240)
    yield hub
    await hub.stop()


async def user_token(hub: Hub, user: str) -> str:
    status, body = await hub.api("POST", f"/users/{user}/tokens", json={"expires_in": 3600})
    assert status == 201, (status, body)
    return body["token"]


@pytest.mark.timeout(1200)  # real builds and image pulls on a shared 2-core machine
async def test_spawn_runs_the_notebook_image_at_its_digest_with_the_typed_env(
    node_cluster, node_kube, hub, notebook_ns, tmp_path
):
    user = f"nb-{uuid.uuid4().hex[:6]}"
    await hub.ensure_user(user)
    options = {
        "image": "notebook:v1",
        "env": {"PLAIN": PLAIN, "BRACES": "{braces}"},
        "secret_env": {"API_KEY": SECRET},
    }
    status, body = await hub.api("POST", f"/users/{user}/server", json=options)
    assert status in (201, 202), (status, body, hub.log_tail(30))
    await hub.wait_ready(user, timeout=240)

    [pod] = await user_pods(node_kube, notebook_ns, user)
    container = pod["spec"]["containers"][0]
    assert container["image"] == node_cluster.node.images["notebook"]
    assert "@sha256:" in container["image"]
    assert pod["spec"]["nodeName"] == "aicoe-node"
    assert pod["status"]["phase"] == "Running"
    status_image = pod["status"]["containerStatuses"][0]["imageID"]
    assert status_image.endswith(container["image"].split("@")[1]), status_image
    assert SECRET not in json.dumps(pod)

    # Inside the container: exactly what was typed, and the secret value.
    token = await user_token(hub, user)
    code = (
        "import os, json; print(json.dumps({k: os.environ.get(k) for k in "
        "['PLAIN', 'BRACES', 'API_KEY', 'JUPYTER_IMAGE']}))"
    )
    seen = json.loads(await run_in_kernel(hub, user, token, code))
    assert seen["PLAIN"] == PLAIN
    assert seen["BRACES"] == "{braces}"
    assert seen["API_KEY"] == SECRET

    # JupyterLab itself, in chromium, through the proxy.
    async with chromium() as browser:
        page = await login(browser, hub.url, user)
        await page.page.goto(f"/user/{user}/lab", wait_until="domcontentloaded")
        await page.page.wait_for_selector(".jp-LabShell", timeout=120_000)
        await page.page.wait_for_selector(".jp-Launcher, .jp-DirListing", timeout=120_000)
        await screenshot(page.page, "node-jupyterlab")
        assert page.errors == [], page.errors
        await page.close()

    # The Secret is owned by the pod: when the pod goes (deleted here through the Kubernetes
    # API, not by the hub), the garbage collector deletes the Secret.
    [secret_ref] = [
        e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e
    ]
    core = client.CoreV1Api(node_kube)
    secret = await core.read_namespaced_secret(secret_ref, notebook_ns)
    [owner] = secret.metadata.owner_references
    assert (owner.kind, owner.uid) == ("Pod", pod["metadata"]["uid"])
    await core.delete_namespaced_pod(pod["metadata"]["name"], notebook_ns)

    async def secret_gone():
        try:
            await core.read_namespaced_secret(secret_ref, notebook_ns)
        except ApiException as e:
            return e.status == 404
        return False

    await wait_for(secret_gone, timeout=120, interval=0.5)
    # the hub notices its server is gone, and nothing of it is left
    await hub.wait_stopped(user, timeout=120)
    assert not await user_pods(node_kube, notebook_ns, user)


async def test_gpu_spawn_fails_with_the_schedulers_reason(
    node_cluster, node_kube, notebook_ns, tmp_path
):
    hub = await start_hub(node_cluster, notebook_ns, tmp_path / "hub", 20)
    try:
        user = f"gpu-{uuid.uuid4().hex[:6]}"
        await hub.ensure_user(user)
        status, body = await hub.api(
            "POST", f"/users/{user}/server", json={"image": "notebook:v1", "gpus": 1}
        )
        assert status == 202, (status, body)
        events = []
        status, _ = await hub.api("GET", f"/users/{user}")
        async with aiohttp.ClientSession() as session:
            async with session.get(
                f"{hub.url}/hub/api/users/{user}/server/progress",
                headers={"Authorization": f"token {hub.token}"},
                timeout=aiohttp.ClientTimeout(total=120),
            ) as r:
                async for line in r.content:
                    if line.startswith(b"data:"):
                        events.append(json.loads(line[5:]))
        final = events[-1]
        assert final.get("failed"), events
        assert "Insufficient nvidia.com/gpu" in final["message"], final
        await hub.wait_stopped(user, timeout=60)

        async def nothing_left():
            pods = await user_pods(node_kube, notebook_ns, user)
            return not pods

        await wait_for(nothing_left, timeout=60, interval=0.5)
    finally:
        await hub.stop()
