"""The chart's idle culler in a real JupyterHub: the service and role the chart's
jupyterhub_config.py makes (from `helm template`, short timeouts) start the real
jupyterhub-idle-culler as a hub-managed service, which stops an idle AICoESpawner server
(real API server, fake kubelet) with no more than its role's scopes."""

from __future__ import annotations

import json
import uuid

import pytest
import pytest_asyncio
from harness.hub import running_hub
from harness.kube import create_imagestream, user_pods
from kubernetes_asyncio import client
from test_helm_culler import CULLER, CULLER_SCOPES, chart_config

from aicoe_devcluster import delete_namespace
from aicoe_devcluster.controlplane import free_port

pytestmark = pytest.mark.integration

A = "opendatahub.io/"
DEFAULT = {f"{A}default-image": "true", f"{A}workbench-image-recommended": "true"}
TIMEOUT = 4  # seconds idle before the culler stops a server


def culler_config(tmp_path, monkeypatch, hub_port: int) -> str:
    """jupyterhub_config.py lines adding the chart's culler service and role to a hub whose
    API listens on ``hub_port`` (the chart's hub.service.port)."""
    c = chart_config(
        tmp_path,
        monkeypatch,
        values={"cull": {"enabled": True, "timeout": TIMEOUT, "every": 1}},
        sets=[
            f"hub.service.port={hub_port}",
            # the builder chart cannot see the hub's port: it is told (the chart asks for it)
            f"builder.hub.url=http://aicoe-aicoe-spawner-hub:{hub_port}",
            f"builder.hub.port={hub_port}",
        ],
    )
    (service,) = [s for s in c.JupyterHub.services if s["name"] == CULLER]
    (role,) = [r for r in c.JupyterHub.load_roles if r["name"] == CULLER]
    assert role["scopes"] == CULLER_SCOPES
    return f"""
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.services.append(json.loads({json.dumps(service)!r}))
c.JupyterHub.load_roles.append(json.loads({json.dumps(role)!r}))
"""


@pytest_asyncio.fixture
async def hub(control_plane, kube, fake_kubelet, tmp_path, monkeypatch):
    ns = f"t-cull-{uuid.uuid4().hex[:6]}"
    await client.CoreV1Api(kube).create_namespace({"metadata": {"name": ns}})
    await create_imagestream(kube, ns, "minimal", {"2025.2": DEFAULT})
    (tmp_path / "chart").mkdir()
    extra = "import json\n" + culler_config(tmp_path / "chart", monkeypatch, free_port())
    async with running_hub(tmp_path / "hub", control_plane.kubeconfig, ns, extra) as hub:
        yield hub
    await delete_namespace(kube, ns)


async def test_the_chart_culler_stops_an_idle_server(hub, kube):
    user = f"idle-{uuid.uuid4().hex[:4]}"
    await hub.ensure_user(user)
    status, body = await hub.api("POST", f"/users/{user}/server", json={})
    assert status in (201, 202), (status, body, hub.log_tail(30))
    await hub.wait_ready(user)
    assert len(await user_pods(kube, hub.namespace, user)) == 1
    await hub.wait_stopped(user, timeout=TIMEOUT + 30)
    log = hub.log_since(0)
    assert f"Starting managed service {CULLER}" in log, hub.log_tail()
    # stopped by the culler, with its own token, through the scope its role grants
    assert f"Culling server {user} (inactive for" in log, hub.log_tail()
    assert f"204 DELETE /hub/api/users/{user}/server ({CULLER}@127.0.0.1)" in log, hub.log_tail()
    refused = [line for line in log.splitlines() if f"({CULLER}@" in line and " 403 " in line]
    assert refused == []
    assert await user_pods(kube, hub.namespace, user) == []
    # the user is kept (cull.users is false)
    status, _ = await hub.api("GET", f"/users/{user}")
    assert status == 200
