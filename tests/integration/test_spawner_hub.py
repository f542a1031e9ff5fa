"""AICoESpawner end to end: a real JupyterHub process, the real API server, the fake kubelet.
Every pod is read back from the API server."""

from __future__ import annotations

import html
import re
import uuid
from itertools import count

import pytest
import pytest_asyncio
from harness.hub import Hub, running_hub
from harness.kube import (
    IMAGE_API,
    MERGE,
    container,
    create_imagestream,
    delete_imagestream,
    digest_for,
    reference,
    set_ready,
    user_pods,
    wait_for,
)
from kubernetes_asyncio import client

from aicoe_devcluster import delete_namespace
from aicoe_spawner.home_seed import SEED_CONTAINER, SEED_MOUNT, marker_name

A = "opendatahub.io/"
DEFAULT = {f"{A}default-image": "true", f"{A}workbench-image-recommended": "true"}

HUB_CONFIG = """
c.AICoESpawner.sizes = [
    {"name": "small", "display_name": "Small", "cpu_guarantee": 0.5, "cpu_limit": 1,
     "mem_guarantee": "1Gi", "mem_limit": "2Gi", "default": True},
    {"name": "medium", "display_name": "Medium", "cpu_guarantee": 1, "cpu_limit": 2,
     "mem_guarantee": "2Gi", "mem_limit": "4Gi"},
    {"name": "large", "display_name": "Large", "cpu_guarantee": 2, "cpu_limit": 4,
     "mem_guarantee": "4Gi", "mem_limit": "8Gi"},
    {"name": "persistent", "display_name": "With a home volume", "cpu_guarantee": 0.5,
     "cpu_limit": 1, "mem_guarantee": "1Gi", "mem_limit": "2Gi", "kubespawner_override": {
        "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": "claim-{username}"}}],
        "volume_mounts": [{"name": "home", "mountPath": "/home/jovyan"}]}},
]
c.AICoESpawner.default_policy = {
    "images": ["minimal", "datascience", "fresh", "after-*", "team-nb"],
    "sizes": ["small", "medium"],
}
c.AICoESpawner.group_policies = {
    "team-a": {"images": ["secret-project"]},
    "big": {"sizes": ["large"], "max_gpus": 2},
    "homes": {"sizes": ["persistent"]},
}
c.AICoESpawner.max_gpus = 1
c.AICoESpawner.gpu_node_selector = {"accelerator": "nvidia"}
c.AICoESpawner.allow_custom_resources = True
c.AICoESpawner.max_cpu = 4
c.AICoESpawner.max_memory = "8Gi"
c.AICoESpawner.reserved_env_names = ["ADMIN_ONLY"]
c.AICoESpawner.max_env_vars = 5
c.AICoESpawner.environment = {"ADMIN_SET": "from-admin"}
c.KubeSpawner.image_pull_secrets = ["site-wide"]
# the chart renders builder.destinations here as they are: the same entries as the builder's
c.AICoESpawner.registry_pull_secrets = [
    {"repositories": ["github.com/team-a/*"], "registry": "quay.io/team-a",
     "pushSecret": "team-a-push", "pullSecret": "team-a-pull", "allow": ["registry-project"]},
]
"""
TEAM_IMAGE = "quay.io/team-a/team-nb@" + digest_for("team-nb:v1")

_users = count()


def new_user() -> str:
    return f"u{next(_users)}-{uuid.uuid4().hex[:4]}"


@pytest_asyncio.fixture(scope="module")
async def env(control_plane, kube, fake_kubelet, tmp_path_factory):
    """One namespace with notebook streams and one hub for this module."""
    ns = f"t-hub-{uuid.uuid4().hex[:6]}"
    await client.CoreV1Api(kube).create_namespace({"metadata": {"name": ns}})
    await create_imagestream(
        kube,
        ns,
        "minimal",
        {
            "2025.2": DEFAULT,
            "2025.1": {},
            "2024.2": {f"{A}image-tag-outdated": "true"},
            "next": {"aicoe-spawner.io/build-phase": "building"},
            "broken": {
                "aicoe-spawner.io/build-phase": "failed",
                "aicoe-spawner.io/build-message": "exit 1",
            },
            "waiting": {},
        },
        ready=["2025.2", "2025.1", "2024.2"],
        annotations={f"{A}notebook-image-name": "Minimal", f"{A}notebook-image-order": "1"},
    )
    await create_imagestream(
        kube,
        ns,
        "datascience",
        {"1.0": {}},
        annotations={f"{A}notebook-image-name": "Data Science"},
    )
    await create_imagestream(kube, ns, "secret-project", {"v1": {}})
    await create_imagestream(
        kube, ns, "hidden", {"v1": {}}, annotations={f"{A}notebook-image-hidden": "true"}
    )
    # an image the builder pushed to team-a's destination (registration writes this status)
    await create_imagestream(kube, ns, "team-nb", {"v1": {}}, ready=[])
    await client.CustomObjectsApi(kube).patch_namespaced_custom_object_status(
        *IMAGE_API,
        ns,
        "imagestreams",
        "team-nb",
        {"status": {"tags": [{"tag": "v1", "items": [{"dockerImageReference": TEAM_IMAGE}]}]}},
        _content_type=MERGE,
    )
    async with running_hub(
        tmp_path_factory.mktemp("hub"), control_plane.kubeconfig, ns, HUB_CONFIG
    ) as hub:
        yield hub
    await delete_namespace(kube, ns)


async def spawn_ok(hub: Hub, kube, user: str, options: dict, groups=()) -> dict:
    await hub.ensure_user(user, list(groups))
    status, body = await hub.api("POST", f"/users/{user}/server", json=options)
    assert status in (201, 202), (status, body, hub.log_tail(30))
    await hub.wait_ready(user)
    pods = await user_pods(kube, hub.namespace, user)
    assert len(pods) == 1
    return pods[0]


def env_of(pod: dict) -> dict[str, str]:
    return {
        e["name"]: e.get("value", "") for e in container(pod).get("env", []) if "valueFrom" not in e
    }


# -- spawning through the REST API -------------------------------------------------------


async def test_rest_defaults_pin_the_default_tag_digest(env, kube):
    user = new_user()
    pod = await spawn_ok(env, kube, user, {})
    c = container(pod)
    assert c["image"] == reference(env.namespace, "minimal", "2025.2")
    assert "@sha256:" in c["image"]
    requests, limits = c["resources"]["requests"], c["resources"]["limits"]
    assert requests["cpu"] in ("0.5", "500m") and limits["cpu"] in ("1", "1.0")
    assert int(requests["memory"]) == 2**30 and int(limits["memory"]) == 2 * 2**30
    ann = pod["metadata"]["annotations"]
    assert ann["aicoe-spawner.io/image-stream"] == f"{env.namespace}/minimal"
    assert ann["aicoe-spawner.io/image-tag"] == "2025.2"
    assert ann["aicoe-spawner.io/size"] == "small"
    assert ann["aicoe-spawner.io/image-digest"] == c["image"].split("@")[1]
    status, model = await env.api("GET", f"/users/{user}")
    assert status == 200
    assert model["servers"][""]["user_options"]["image"] == "minimal:2025.2"
    await env.stop_server(user)


async def test_rest_every_option_lands_on_the_pod(env, kube):
    user = new_user()
    options = {
        "image": "datascience:1.0",
        "size": "large",
        "gpus": 2,
        "env": {"MY_VAR": "hello", "TEMPLATE": "{username} {{x}}", "EMPTY": "", "REF": "$(HOME)"},
    }
    pod = await spawn_ok(env, kube, user, {"user_options": options}, groups=["big"])
    c = container(pod)
    assert c["image"] == reference(env.namespace, "datascience", "1.0")
    res = c["resources"]
    assert res["limits"]["nvidia.com/gpu"] == "2"
    assert res["limits"]["cpu"] in ("4", "4.0")
    assert res["requests"]["cpu"] in ("2", "2.0")
    assert int(res["limits"]["memory"]) == 8 * 2**30
    assert int(res["requests"]["memory"]) == 4 * 2**30
    tolerations = pod["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    assert pod["spec"]["nodeSelector"] == {"accelerator": "nvidia"}
    env_vars = env_of(pod)
    assert env_vars["MY_VAR"] == "hello"
    assert env_vars["TEMPLATE"] == "{username} {{x}}"  # literal, never expanded
    assert env_vars["EMPTY"] == ""
    assert env_vars["REF"] == "$$(HOME)"  # Kubernetes would expand $(HOME); $$ keeps it literal
    assert env_vars["ADMIN_SET"] == "from-admin"
    assert env_vars["JUPYTER_IMAGE"] == c["image"]
    ann = pod["metadata"]["annotations"]
    assert (ann["aicoe-spawner.io/size"], ann["aicoe-spawner.io/gpus"]) == ("large", "2")
    await env.stop_server(user)

    # The same spawner object spawns again without GPUs: nothing of the last spawn lingers.
    status, body = await env.api(
        "POST", f"/users/{user}/server", json={"image": "minimal:2025.1", "size": "small"}
    )
    assert status in (201, 202), body
    await env.wait_ready(user)
    pod = (await user_pods(kube, env.namespace, user))[0]
    assert "nvidia.com/gpu" not in container(pod)["resources"].get("limits", {})
    assert not pod["spec"].get("nodeSelector")
    assert container(pod)["image"] == reference(env.namespace, "minimal", "2025.1")
    assert "MY_VAR" not in env_of(pod)
    await env.stop_server(user)


async def test_a_home_volume_gets_the_seed_init_container_with_the_notebooks_bounds(env, kube):
    """A size that mounts a volume at the home: the pod (as the API server has it) starts with
    the seed-home init container of the same image, resources and securityContext; a size
    without one has none."""
    user = new_user()
    options = {"image": "minimal:2025.2", "size": "persistent"}
    pod = await spawn_ok(env, kube, user, options, groups=["homes"])
    c = container(pod)
    [seed] = pod["spec"]["initContainers"]
    assert seed["name"] == SEED_CONTAINER
    assert seed["image"] == c["image"] and "@sha256:" in seed["image"]
    assert seed["resources"] == c["resources"]
    assert seed["securityContext"] == c["securityContext"]
    assert seed["volumeMounts"] == [{"name": "home", "mountPath": SEED_MOUNT}]
    assert seed["command"][4:] == ["/home/jovyan", SEED_MOUNT, marker_name(c["image"])]
    assert not seed.get("env")
    await env.stop_server(user)
    pod = await spawn_ok(env, kube, user, {"image": "minimal:2025.2", "size": "small"})
    assert not pod["spec"].get("initContainers")
    await env.stop_server(user)


async def test_an_image_under_a_mapped_registry_gets_its_pull_secret(env, kube):
    """registry_pull_secrets: a server of an image the admin's mapping covers gets its pull
    Secret beside KubeSpawner's image_pull_secrets; the next server, of another image, not."""
    user = new_user()
    pod = await spawn_ok(env, kube, user, {"image": "team-nb:v1"})
    assert container(pod)["image"] == TEAM_IMAGE
    assert pod["spec"]["imagePullSecrets"] == [{"name": "site-wide"}, {"name": "team-a-pull"}]
    await env.stop_server(user)
    pod = await spawn_ok(env, kube, user, {"image": "minimal:2025.2"})
    assert pod["spec"]["imagePullSecrets"] == [{"name": "site-wide"}]
    await env.stop_server(user)


async def test_rest_custom_resources(env, kube):
    user = new_user()
    pod = await spawn_ok(
        env, kube, user, {"image": "minimal:2025.2", "cpu": "1.5", "memory": "3Gi"}
    )
    res = container(pod)["resources"]
    assert res["limits"]["cpu"] in ("1.5", "1500m") and res["requests"]["cpu"] in ("1.5", "1500m")
    assert int(res["limits"]["memory"]) == int(res["requests"]["memory"]) == 3 * 2**30
    await env.stop_server(user)


async def test_group_grants_a_stream(env, kube):
    user = new_user()
    pod = await spawn_ok(env, kube, user, {"image": "secret-project:v1"}, groups=["team-a"])
    assert container(pod)["image"] == reference(env.namespace, "secret-project", "v1")
    await env.stop_server(user)


# -- bad input: 400 naming the field, no pod, hub healthy ---------------------------------

BIG = "x" * (1024 * 1024)
BAD_INPUTS = [
    ({"colour": "red"}, "colour"),
    ({"profile": "x"}, "profile"),
    ({"image": "nope:1"}, "image"),
    ({"image": "minimal:9.9"}, "image"),
    ({"image": "minimal:2024.2"}, "image"),  # outdated
    ({"image": "minimal:next"}, "image"),  # building
    ({"image": "minimal:broken"}, "image"),  # failed
    ({"image": "minimal:waiting"}, "image"),  # pending
    ({"image": "hidden:v1"}, "image"),
    ({"image": "secret-project:v1"}, "image"),  # not in the user's groups
    ({"image": "other-ns/minimal:2025.2"}, "image"),
    ({"image": "../etc:passwd"}, "image"),
    ({"image": 42}, "image"),
    ({"image": ["minimal:2025.2"]}, "image"),
    ({"size": "huge"}, "size"),
    ({"size": "large"}, "size"),  # not allowed for the user's groups
    ({"size": None}, "size"),
    ({"cpu": "5"}, "cpu"),
    ({"cpu": "-1"}, "cpu"),
    ({"cpu": "lots"}, "cpu"),
    ({"memory": "9Gi"}, "memory"),
    ({"memory": "8 Gi"}, "memory"),
    ({"gpus": 2}, "gpus"),  # over the maximum for this user
    ({"gpus": -1}, "gpus"),
    ({"gpus": 1.5}, "gpus"),
    ({"gpus": "1"}, "gpus"),
    ({"gpus": True}, "gpus"),
    ({"gpus": None}, "gpus"),
    ({"env": "A=1"}, "env"),
    ({"env": {"1ABC": "x"}}, "env"),
    ({"env": {"A-B": "x"}}, "env"),
    ({"env": {"JUPYTERHUB_API_TOKEN": "x"}}, "JUPYTERHUB_API_TOKEN"),
    ({"env": {"JPY_COOKIE": "x"}}, "JPY_COOKIE"),
    ({"env": {"MEM_LIMIT": "1"}}, "MEM_LIMIT"),
    ({"env": {"CPU_LIMIT": "1"}}, "CPU_LIMIT"),
    ({"env": {"JUPYTER_IMAGE_SPEC": "x"}}, "JUPYTER_IMAGE_SPEC"),
    ({"env": {"ADMIN_ONLY": "x"}}, "ADMIN_ONLY"),
    ({"env": {"BIG": BIG}}, "BIG"),
    ({"env": {"NUM": 1}}, "NUM"),
    ({"env": {f"V{i}": "x" for i in range(6)}}, "env"),
    ({"secret_env": {"A": 1}}, "secret_env"),
]


@pytest.mark.parametrize(
    ("options", "field"), BAD_INPUTS, ids=[f"{i}-{f}" for i, (_, f) in enumerate(BAD_INPUTS)]
)
async def test_bad_user_options_are_400_naming_the_field(env, kube, options, field):
    user = new_user()
    await env.ensure_user(user)
    status, body = await env.api("POST", f"/users/{user}/server", json={"user_options": options})
    assert status == 400, (status, body)
    assert field in body["message"], body
    assert await user_pods(kube, env.namespace, user) == []
    status, model = await env.api("GET", f"/users/{user}")
    assert status == 200 and model["servers"] == {}
    status, _ = await env.api("GET", "/")
    assert status == 200


@pytest.mark.parametrize("body", [["minimal:2025.2"], "minimal:2025.2", 7])
async def test_user_options_that_are_not_an_object(env, kube, body):
    user = new_user()
    await env.ensure_user(user)
    status, reply = await env.api("POST", f"/users/{user}/server", json=body)
    assert status == 400, reply
    assert await user_pods(kube, env.namespace, user) == []


# -- the HTML form and /hub/spawn links ---------------------------------------------------


def options_in(page: str) -> dict[str, str]:
    """value -> phase of every image option, plus 'disabled' marks."""
    found = {}
    for m in re.finditer(r'<option value="([^"]+)" data-phase="(\w+)"([^>]*)>', page):
        found[html.unescape(m.group(1))] = m.group(2) + (
            " disabled" if "disabled" in m.group(3) else ""
        )
    return found


def image_checked(page: str) -> str | None:
    """The image the form preselects: the value of the checked image radio button."""
    checked = [
        html.unescape(m.group(1))
        for m in re.finditer(r'<input[^>]*name="image"[^>]*value="([^"]*)"([^>]*)>', page)
        if re.search(r"\schecked\b", m.group(2))
    ]
    assert len(checked) <= 1, checked
    return checked[0] if checked else None


async def test_form_lists_the_catalog_and_post_spawns(env, kube):
    user = new_user()
    await env.ensure_user(user)
    web = await env.login(user)
    try:
        page = await web.spawn_page(user)
        images = options_in(page)
        assert images["minimal:2025.2"] == "ready"
        assert images["minimal:next"] == "building disabled"
        assert images["minimal:broken"] == "failed disabled"
        assert "minimal:2024.2" not in images  # outdated
        assert not any(k.startswith("hidden:") or k.startswith("secret-project:") for k in images)
        assert list(images).index("minimal:2025.2") < list(images).index(
            "datascience:1.0"
        )  # order annotation
        status, _ = await web.post_form(
            user,
            [
                ("image", "datascience:1.0"),
                ("size", "medium"),
                ("env_name", "FOO"),
                ("env_value", "{username}"),
                ("env_name", ""),
                ("env_value", ""),
            ],
        )
        assert status == 302
        await env.wait_ready(user)
        pod = (await user_pods(kube, env.namespace, user))[0]
        assert container(pod)["image"] == reference(env.namespace, "datascience", "1.0")
        assert env_of(pod)["FOO"] == "{username}"
        assert pod["metadata"]["annotations"]["aicoe-spawner.io/size"] == "medium"
        await env.stop_server(user)
        # The form remembers the last choice.
        page = await web.spawn_page(user)
        assert image_checked(page) == "datascience:1.0"
        assert re.search(r'value="medium"\s+checked', page)
    finally:
        await web.close()


async def test_form_post_with_bad_input_shows_the_error(env, kube):
    user = new_user()
    await env.ensure_user(user)
    web = await env.login(user)
    try:
        status, page = await web.post_form(
            user, [("image", "minimal:2025.2"), ("size", "small"), ("gpus", "7")]
        )
        assert status == 400
        assert "gpus" in html.unescape(page)
        assert await user_pods(kube, env.namespace, user) == []
    finally:
        await web.close()


async def test_spawn_link_with_query_arguments(env, kube):
    user = new_user()
    await env.ensure_user(user)
    web = await env.login(user)
    try:
        link = f"/hub/spawn/{user}?image=minimal:2025.1&size=medium"
        # Opening the link starts nothing: it shows the choice, the user presses Start.
        status, page = await web.get(link, allow_redirects=False)
        assert status == 200 and 'id="aicoe-link-notice"' in page
        assert await user_pods(kube, env.namespace, user) == []
        status, _ = await web.post_form(
            user, [("image", "minimal:2025.1"), ("size", "medium")], page_path=link
        )
        assert status == 302
        await env.wait_ready(user)
        pod = (await user_pods(kube, env.namespace, user))[0]
        assert container(pod)["image"] == reference(env.namespace, "minimal", "2025.1")
        assert pod["metadata"]["annotations"]["aicoe-spawner.io/size"] == "medium"
        await env.stop_server(user)
        status, page = await web.get(f"/hub/spawn/{user}?image=minimal:2025.1&size=huge")
        assert status == 400 and "size" in page
        assert await user_pods(kube, env.namespace, user) == []
    finally:
        await web.close()


# -- a live catalog ---------------------------------------------------------------------


async def test_catalog_changes_reach_the_form(env, kube):
    user = new_user()
    await env.ensure_user(user)
    web = await env.login(user)
    try:
        await create_imagestream(kube, env.namespace, "fresh", {"t1": {}}, ready=[])

        async def listed(phase: str):
            return options_in(await web.spawn_page(user)).get("fresh:t1", "").startswith(phase)

        await wait_for(lambda: listed("pending"), timeout=15)
        await set_ready(kube, env.namespace, "fresh", ["t1"])
        await wait_for(lambda: listed("ready"), timeout=15)

        # Spawn on it, then delete it: the saved choice falls back to the default on the form.
        await spawn_ok(env, kube, user, {"image": "fresh:t1"})
        await env.stop_server(user)
        await delete_imagestream(kube, env.namespace, "fresh")

        async def gone():
            return "fresh:t1" not in options_in(await web.spawn_page(user))

        await wait_for(gone, timeout=15)
        page = await web.spawn_page(user)
        assert image_checked(page) == "minimal:2025.2"
        status, body = await env.api("POST", f"/users/{user}/server", json={"image": "fresh:t1"})
        assert status == 400 and "image" in body["message"]
    finally:
        await web.close()


async def test_form_survives_apiserver_restart(env, kube, control_plane):
    user = new_user()
    await env.ensure_user(user)
    web = await env.login(user)
    try:
        assert "minimal:2025.2" in options_in(await web.spawn_page(user))
        control_plane.stop_apiserver()
        try:
            page = await web.spawn_page(user)
            assert "minimal:2025.2" in options_in(page)  # the last known catalog

            async def stale_notice():
                return 'id="aicoe-stale"' in await web.spawn_page(user)

            await wait_for(stale_notice, timeout=15)
        finally:
            control_plane.start_apiserver()
        await create_imagestream(kube, env.namespace, "after-restart", {"v1": {}})

        async def listed():
            page = await web.spawn_page(user)
            return "after-restart:v1" in options_in(page) and 'id="aicoe-stale"' not in page

        await wait_for(listed, timeout=15)
    finally:
        await web.close()
