"""Start and stop a control plane with a real node (kubelet, containerd, scheduler,
controller-manager) for the node tier and the demo-journey tests."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from kubernetes_asyncio import client

from aicoe_devcluster import ControlPlane
from aicoe_devcluster.controlplane import REPO_ROOT
from aicoe_devcluster.demo import NAMESPACE, Demo
from aicoe_devcluster.node import RealNode
from aicoe_devcluster.packages import PackageSources
from harness.kube import user_pods

# Clusters started and not yet stopped (their logs are attached to failing tests).
RUNNING: list[NodeCluster] = []


@dataclass
class NodeCluster:
    plane: ControlPlane
    node: RealNode

    def log_tail(self) -> str:
        return self.plane.log_tail(30) + "\n" + self.node.log_tail(40)


def start_node_cluster(
    images: tuple[str, ...] = ("notebook",), *, cluster_services: bool = False
) -> NodeCluster:
    """With ``cluster_services`` the API server listens on the node IP and kube-proxy and
    CoreDNS run (what an in-cluster client such as the Helm chart's hub needs)."""
    plane = ControlPlane(real_node=True)
    try:
        if not cluster_services:
            plane.start()
        node = RealNode(plane, cluster_services=cluster_services).start(images=images)
    except BaseException:
        plane.stop()
        raise
    cluster = NodeCluster(plane, node)
    RUNNING.append(cluster)
    return cluster


def stop_node_cluster(cluster: NodeCluster) -> None:
    if cluster in RUNNING:
        RUNNING.remove(cluster)
    try:
        cluster.node.stop()
    finally:
        cluster.plane.stop()


# -- package sources for build pods (issue 22): a PEP 503 index and a Debian repository ------

TEST_REPOS = REPO_ROOT / "tests" / "data" / "repos"
# Debian packages besides the test repositories' apt.txt: a small one for quick checks.
EXTRA_APT = ("tree",)


def data_repo(name: str) -> Path:
    """A real public repository's environment files (tests/data/repos/<name>, see PROVENANCE)."""
    path = TEST_REPOS / name
    assert path.is_dir(), f"no test repository {path}"
    return path


def start_package_sources(node_ip: str) -> PackageSources:
    """The index and Debian repository on the node IP, serving what the test repositories
    install (and micropipenv, uv, pip, setuptools, wheel, hatchling)."""
    return PackageSources(sorted(TEST_REPOS.iterdir()), node_ip, extra_apt=EXTRA_APT).start()


# -- the demo hub and builder of the node tier (tests/node/conftest.py's ``demo``) -----------

ADMIN_TOKEN = secrets.token_hex(16)
TESTER = f"""
c.JupyterHub.services.append({{"name": "tester", "api_token": {ADMIN_TOKEN!r}}})
c.JupyterHub.load_roles.append({{"name": "tester", "scopes": ["admin:users", "admin:servers",
    "tokens", "read:users"], "services": ["tester"]}})
c.KubeSpawner.http_timeout = 120  # a server's first answer, on a busy shared 2-core machine
"""
# Each user's home: a persistent volume (a folder of the node), as the chart's claim would be.
HOMES = """
c.KubeSpawner.volumes = [{"name": "home", "hostPath": {"path": "{homes}/{username}",
    "type": "Directory"}}]
c.KubeSpawner.volume_mounts = [{"name": "home", "mountPath": "/home/jovyan"}]
"""

# How often the demo's builder imports (tests/node/test_image_import.py follows moved tags and
# recovers from failures within seconds; the builder's defaults are 30 s / 15 min / 2 min).
IMPORT_POLL, IMPORT_INTERVAL, IMPORT_RETRY = 1, 8, 2


class NodeDemo(Demo):
    """The demo with a tester service (``ADMIN_TOKEN``) and each user's home a folder of
    ``homes`` on the node."""

    def __init__(self, *args, homes: Path, extra_config: str = "", **kwargs) -> None:
        config = TESTER + HOMES.replace("{homes}", str(homes)) + extra_config
        super().__init__(*args, extra_config=config, **kwargs)
        self.homes = homes


async def hub_api(demo: Demo, method: str, path: str, **kwargs):
    headers = {"Authorization": f"token {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as s:
        async with s.request(method, f"{demo.url}/hub/api{path}", **kwargs) as r:
            return r.status, (await r.json() if r.content_type == "application/json" else None)


async def new_user_token(demo: NodeDemo) -> tuple[str, str]:
    user = f"dev-{uuid.uuid4().hex[:6]}"
    # the user's empty volume: the notebook user's, writable by group 0 as OpenShift's
    # convention has it (source-to-image images run as uid 1001 in group 0)
    home = demo.homes / user
    home.mkdir()
    os.chown(home, 1000, 0)
    home.chmod(0o775)
    status, _ = await hub_api(demo, "POST", f"/users/{user}")
    assert status == 201
    status, body = await hub_api(demo, "POST", f"/users/{user}/tokens", json={})
    assert status == 201, body
    return user, body["token"]


async def start_server(demo: Demo, kube, user: str, image: str) -> dict:
    """Start the user's server on ``image`` from the hub; its pod once it is ready."""
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
    return pod


async def stop_server(demo: Demo, kube, user: str) -> None:
    status, _ = await hub_api(demo, "DELETE", f"/users/{user}/server")
    assert status in (202, 204)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        _, model = await hub_api(demo, "GET", f"/users/{user}")
        if (
            not model["servers"]
            and not model["pending"]
            and not await user_pods(kube, NAMESPACE, user)
        ):
            return
        await asyncio.sleep(1)
    raise AssertionError(f"{user}'s server did not stop")


async def contents(demo: Demo, user: str, token: str, path: str, method="GET", body=None):
    """The Jupyter contents API of the user's server (through the proxy)."""
    headers = {"Authorization": f"token {token}"}
    async with aiohttp.ClientSession(headers=headers) as s:
        url = f"{demo.url}/user/{user}/api/contents/{path}"
        async with s.request(method, url, json=body) as r:
            assert r.status in (200, 201), (r.status, await r.text())
            return await r.json()


async def spawn_and_read(demo: Demo, kube, user: str, token: str, image: str, path: str):
    pod = await start_server(demo, kube, user, image)
    content = await contents(demo, user, token, path)
    status, _ = await hub_api(demo, "DELETE", f"/users/{user}/server")
    assert status in (202, 204)
    return pod, content


async def stream_tag(kube, image: str) -> tuple[dict, dict | None]:
    """(spec tag, status tag) of ``namespace/stream:tag``."""
    namespace, name_tag = image.split("/", 1)
    stream, tag = name_tag.split(":")
    is_ = await client.CustomObjectsApi(kube).get_namespaced_custom_object(
        "image.openshift.io", "v1", namespace, "imagestreams", stream
    )
    [spec_tag] = [t for t in is_["spec"]["tags"] if t["name"] == tag]
    status = [t for t in (is_.get("status") or {}).get("tags") or [] if t["tag"] == tag]
    return spec_tag, status[0] if status else None


async def stream_tag_or_none(kube, image: str) -> tuple[dict | None, dict | None]:
    """:func:`stream_tag`, or (None, None) when the stream or the tag does not exist."""
    try:
        return await stream_tag(kube, image)
    except client.ApiException as e:
        if e.status == 404:
            return None, None
        raise
    except ValueError:  # the stream exists without this tag
        return None, None
