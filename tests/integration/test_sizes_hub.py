"""Sizes that do what KubeSpawner profiles do (issue 14), through a real hub: the z2jh values
file of docs/zero-to-jupyterhub.md, its profileList unchanged, spawns each profile with its node
selector, tolerations and limits; overrides never leak into the next spawn; REST ``profile``
and KubeSpawner's form fields work; an unmappable profile stops the hub with a message.
Profiles with their own image and unlisted choices: test_profiles_hub.py."""

from __future__ import annotations

import re
import uuid
from itertools import count

import pytest
import pytest_asyncio
import yaml
from harness.hub import Hub, running_hub, spawn_one_pod
from harness.kube import container, create_imagestream, reference, user_pods
from kubernetes_asyncio import client

from aicoe_devcluster import delete_namespace
from aicoe_devcluster.controlplane import REPO_ROOT
from aicoe_spawner.options import parse_memory

A = "opendatahub.io/"
DEFAULT = {f"{A}default-image": "true", f"{A}workbench-image-recommended": "true"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def documented_profile_list() -> list[dict]:
    """singleuser.profileList of the z2jh values file in docs/zero-to-jupyterhub.md."""
    text = (REPO_ROOT / "docs" / "zero-to-jupyterhub.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    values = [yaml.safe_load(b) for b in blocks if "profileList:" in b]
    assert len(values) == 1, "one z2jh values file with a profileList in the docs"
    return values[0]["singleuser"]["profileList"]


PROFILE_LIST = documented_profile_list()
# As z2jh's jupyterhub_config.py does with singleuser.profileList.
HUB_CONFIG = f"""
c.KubeSpawner.profile_list = {PROFILE_LIST!r}
"""

_users = count()


def new_user() -> str:
    return f"p{next(_users)}-{uuid.uuid4().hex[:4]}"


@pytest_asyncio.fixture(scope="module")
async def env(control_plane, kube, fake_kubelet, tmp_path_factory):
    ns = f"t-sizes-{uuid.uuid4().hex[:6]}"
    await client.CoreV1Api(kube).create_namespace({"metadata": {"name": ns}})
    await create_imagestream(kube, ns, "minimal", {"2025.2": DEFAULT})
    async with running_hub(
        tmp_path_factory.mktemp("sizeshub"), control_plane.kubeconfig, ns, HUB_CONFIG
    ) as hub:
        yield hub
    await delete_namespace(kube, ns)


spawn = spawn_one_pod


async def test_the_form_offers_the_profiles_as_sizes_with_the_image_picker(env):
    user = new_user()
    await env.ensure_user(user)
    web = await env.login(user)
    try:
        page = await web.spawn_page(user)
    finally:
        await web.close()
    for profile in PROFILE_LIST:
        assert f'value="{profile["slug"]}"' in page
        assert profile["display_name"] in page
        assert profile["description"] in page
    assert re.search(r'value="small"\s+checked', page)  # default: true
    assert 'name="profile-option-gpu--gpu_type"' in page
    assert "NVIDIA A100" in page
    assert 'name="image"' in page and "minimal:2025.2" in page


async def test_each_profile_spawns_with_its_overrides(env, kube):
    by_slug = {p["slug"]: p for p in PROFILE_LIST}
    user = new_user()
    await env.ensure_user(user)
    pod = await spawn(env, kube, user, {"profile": "small"})
    assert container(pod)["image"] == reference(env.namespace, "minimal", "2025.2")
    # mem_limit: 2G is 2 GiB, as KubeSpawner reads it (JupyterHub's ByteSpecification)
    assert parse_memory(container(pod)["resources"]["limits"]["memory"]) == 2 * 2**30
    assert not pod["spec"].get("nodeSelector")
    await env.stop_server(user)

    pod = await spawn(env, kube, user, {"profile": "highmem"})
    override = by_slug["highmem"]["kubespawner_override"]
    assert pod["spec"]["nodeSelector"] == override["node_selector"]
    assert pod["metadata"]["labels"]["node-pool"] == "highmem"
    assert {"name": "scratch", "emptyDir": {}} in pod["spec"]["volumes"]
    mounts = container(pod)["volumeMounts"]
    assert {"name": "scratch", "mountPath": "/scratch"} in mounts
    assert container(pod)["resources"]["limits"]["cpu"] in ("4", "4.0")
    await env.stop_server(user)

    pod = await spawn(env, kube, user, {"profile": "gpu"})
    assert pod["spec"]["nodeSelector"] == {"node-pool": "gpu", "gpu-type": "t4"}
    assert GPU_TOLERATION in pod["spec"]["tolerations"]
    assert container(pod)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["metadata"]["annotations"]["aicoe-spawner.io/size"] == "gpu"
    assert pod["metadata"]["annotations"]["aicoe-spawner.io/size-options"] == "gpu_type=t4"
    _, model = await env.api("GET", f"/users/{user}")
    saved = model["servers"][""]["user_options"]
    assert saved["size"] == "gpu" and saved["size_options"] == {"gpu_type": "t4"}
    await env.stop_server(user)

    # KubeSpawner's REST shape with a profile option.
    pod = await spawn(env, kube, user, {"profile": "gpu", "gpu_type": "a100"})
    assert pod["spec"]["nodeSelector"] == {"node-pool": "gpu", "gpu-type": "a100"}
    await env.stop_server(user)

    # Then a different size on the same spawner object: nothing of the last spawn lingers.
    pod = await spawn(env, kube, user, {"size": "small"})
    assert not pod["spec"].get("nodeSelector")
    assert GPU_TOLERATION not in (pod["spec"].get("tolerations") or [])
    assert "nvidia.com/gpu" not in container(pod)["resources"].get("limits", {})
    assert "node-pool" not in pod["metadata"]["labels"]
    assert not any(v["name"] == "scratch" for v in pod["spec"].get("volumes") or [])
    assert pod["metadata"]["annotations"]["aicoe-spawner.io/size"] == "small"
    assert "aicoe-spawner.io/size-options" not in pod["metadata"]["annotations"]
    await env.stop_server(user)


async def test_kubespawner_form_fields_are_accepted(env, kube):
    user = new_user()
    await env.ensure_user(user)
    web = await env.login(user)
    try:
        status, _ = await web.post_form(
            user,
            [
                ("profile", "gpu"),
                ("profile-option-gpu--gpu_type", "a100"),
                ("profile-option-highmem--ignored", "x"),
            ],
        )
        assert status == 302
        await env.wait_ready(user)
    finally:
        await web.close()
    pod = (await user_pods(kube, env.namespace, user))[0]
    assert pod["spec"]["nodeSelector"] == {"node-pool": "gpu", "gpu-type": "a100"}
    await env.stop_server(user)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"profile": "huge"}, "profile"),
        ({"profile": "gpu", "gpu_type": "h100"}, "size_options.gpu_type"),
        ({"profile": "small", "gpu_type": "t4"}, "gpu_type"),
    ],
)
async def test_unknown_profiles_and_choices_are_400(env, kube, options, field):
    user = new_user()
    await env.ensure_user(user)
    status, body = await env.api("POST", f"/users/{user}/server", json=options)
    assert status == 400 and body["message"].startswith(f"{field}: "), body
    assert await user_pods(kube, env.namespace, user) == []


UNMAPPABLE = [
    (
        """c.KubeSpawner.profile_list = [
            {"display_name": "Pools", "kubespawner_override": {"namespace": "elsewhere"}}]""",
        ["profile 'Pools'", "'namespace'", "c.KubeSpawner.namespace"],
    ),
    (
        """c.KubeSpawner.profile_list = [{"display_name": "Small"}]
c.AICoESpawner.sizes = [{"name": "small"}]""",
        ["both sizes and profile_list"],
    ),
    (
        """c.AICoESpawner.sizes = [
            {"name": "gpu", "kubespawner_override": {"tolerations": "not-a-list"}}]""",
        ["size 'gpu'", "'tolerations'"],
    ),
    (
        """c.KubeSpawner.profile_list = [
            {"display_name": "Any", "profile_options": {"image": {"unlisted_choice": {
                "enabled": True, "validation_regex": "(",
                "kubespawner_override": {"image": "{value}"}}}}}]""",
        ["profile 'Any'", "unlisted_choice", "'validation_regex'"],
    ),
]


@pytest.mark.parametrize(("config", "words"), UNMAPPABLE)
async def test_an_unmappable_configuration_stops_the_hub_with_a_message(
    control_plane, tmp_path, config, words
):
    hub = Hub(tmp_path / "hub", control_plane.kubeconfig, "default", 1, config)
    try:
        with pytest.raises(RuntimeError, match="exited with 1"):
            await hub.start(timeout=60)
    finally:
        await hub.stop()
    log = hub.log_path.read_text(errors="replace")
    marker = "AICoESpawner cannot start with this configuration"
    line = next((ln for ln in log.splitlines() if marker in ln), None)
    assert line is not None, log[-3000:]
    for word in words:
        assert word in line, line
