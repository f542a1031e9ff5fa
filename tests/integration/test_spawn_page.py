"""Links and forms through a real hub (issue 12): a link shows its choice and starts nothing,
a link opened while the server runs says so, a rejected choice keeps the user's entries and
logs one line, minimums, falsy REST bodies; and the review findings: group overrides per spawn,
the secret-env Secret's name and ownership, secret values never in an API response."""

from __future__ import annotations

import asyncio
import base64
import html
import json
import re
import uuid
from itertools import count

import pytest
import pytest_asyncio
from harness.hub import Hub, running_hub
from harness.kube import container, create_imagestream, reference, user_pods, wait_for
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from aicoe_devcluster import delete_namespace

A = "opendatahub.io/"
DEFAULT = {f"{A}default-image": "true", f"{A}workbench-image-recommended": "true"}

HUB_CONFIG = """
import asyncio, os

c.AICoESpawner.sizes = [
    {"name": "small", "display_name": "Small", "cpu_guarantee": 0.5, "cpu_limit": 1,
     "mem_guarantee": "1Gi", "mem_limit": "2Gi", "default": True},
    {"name": "medium", "display_name": "Medium", "cpu_guarantee": 1, "cpu_limit": 2,
     "mem_guarantee": "2Gi", "mem_limit": "4Gi",
     "kubespawner_override": {"extra_labels": {"tier": "medium"},
                              "node_selector": {"disk": "ssd"}}},
]
c.AICoESpawner.allow_custom_resources = True
c.AICoESpawner.max_cpu = 4
c.AICoESpawner.max_memory = "8Gi"
c.AICoESpawner.max_gpus = 1
c.AICoESpawner.group_overrides = {
    "01-pool-a": {
        "groups": ["pool-a"],
        "spawner_override": {
            "node_selector": {"pool": "a"},
            "tolerations": [{"key": "pool", "operator": "Equal", "value": "a",
                             "effect": "NoSchedule"}],
            "extra_annotations": {"pool": "a"},
        },
    },
}


async def hold_until_released(spawner, auth_state):
    # Holds a spawn of a user called held-* between JupyterHub storing user_options and
    # apply_user_options, until the test creates the file release-<name> in the hub's cwd.
    if spawner.user.name.startswith("held-"):
        while not os.path.exists("release-" + spawner.user.name):
            await asyncio.sleep(0.05)

c.Spawner.auth_state_hook = hold_until_released
"""

_users = count()


def new_user(prefix: str = "l") -> str:
    return f"{prefix}{next(_users)}-{uuid.uuid4().hex[:4]}"


@pytest_asyncio.fixture(scope="module")
async def env(control_plane, kube, fake_kubelet, tmp_path_factory):
    ns = f"t-links-{uuid.uuid4().hex[:6]}"
    await client.CoreV1Api(kube).create_namespace({"metadata": {"name": ns}})
    await create_imagestream(
        kube,
        ns,
        "minimal",
        {"2025.2": DEFAULT, "2025.1": {}},
        annotations={f"{A}notebook-image-name": "Minimal", f"{A}notebook-image-order": "1"},
    )
    await create_imagestream(kube, ns, "datascience", {"1.0": {}})
    async with running_hub(
        tmp_path_factory.mktemp("linkhub"), control_plane.kubeconfig, ns, HUB_CONFIG
    ) as hub:
        yield hub
    await delete_namespace(kube, ns)


async def server_model(hub: Hub, user: str) -> dict:
    status, model = await hub.api("GET", f"/users/{user}")
    assert status == 200, model
    return model


def field_value(page: str, element_id: str) -> str:
    match = re.search(rf'<input[^>]*id="{element_id}"[^>]*value="([^"]*)"', page, re.S)
    assert match, element_id
    return html.unescape(match.group(1))


def text_of(page: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>(.*?)</', page, re.S)
    assert match, element_id
    return html.unescape(re.sub(r"<[^>]+>", "", match.group(1))).strip()


# -- links ------------------------------------------------------------------------------------


async def test_a_link_shows_its_choice_and_starts_nothing_until_start(env, kube):
    user = new_user()
    await env.ensure_user(user)
    web = await env.login(user)
    try:
        link = f"/hub/spawn/{user}?image=minimal:2025.1&size=medium&cpu=1.5"
        status, page = await web.get(link, allow_redirects=False)
        assert status == 200, page[:300]
        assert "minimal:2025.1" in text_of(page, "aicoe-link-starts")
        assert "size medium" in text_of(page, "aicoe-link-starts")
        assert re.search(r'value="medium"\s+checked', page)
        assert field_value(page, "aicoe-cpu") == "1.5"
        assert await user_pods(kube, env.namespace, user) == []
        model = await server_model(env, user)
        assert model["servers"] == {} and not model["pending"]
        # The user presses Start on that page: the link's choice starts.
        status, _ = await web.post_form(
            user,
            [("image", "minimal:2025.1"), ("size", "medium"), ("cpu", "1.5")],
            page_path=link,
        )
        assert status == 302
        await env.wait_ready(user)
        pod = (await user_pods(kube, env.namespace, user))[0]
        assert container(pod)["image"] == reference(env.namespace, "minimal", "2025.1")
        assert pod["metadata"]["annotations"]["aicoe-spawner.io/size"] == "medium"
        assert container(pod)["resources"]["limits"]["cpu"] in ("1.5", "1500m")
        # The size's own overrides.
        assert pod["metadata"]["labels"]["tier"] == "medium"
        assert pod["spec"]["nodeSelector"] == {"disk": "ssd"}
        await env.stop_server(user)
        # The next spawn, at another size, has none of them.
        status, body = await env.api("POST", f"/users/{user}/server", json={"size": "small"})
        assert status in (201, 202), body
        await env.wait_ready(user)
        pod = (await user_pods(kube, env.namespace, user))[0]
        assert "tier" not in pod["metadata"]["labels"]
        assert not pod["spec"].get("nodeSelector")
        await env.stop_server(user)
        # A link shows what it starts: what it does not say is the default, not the user's
        # last choice.
        await env.api("POST", f"/users/{user}/server", json={"size": "medium", "cpu": "3"})
        await env.wait_ready(user)
        await env.stop_server(user)
        status, page = await web.get(f"/hub/spawn/{user}?image=minimal:2025.1")
        assert status == 200
        assert "size small" in text_of(page, "aicoe-link-starts")
        assert re.search(r'value="small"\s+checked', page)
        assert field_value(page, "aicoe-cpu") == ""
    finally:
        await web.close()


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("image=minimal:2025.2&env_name=PYTHONWARNINGS&env_value=x", "env_name"),
        ("image=minimal:2025.2&opt-env_name=BROWSER&opt-env_value=x", "env_name"),
        ("secret_env_name=A&secret_env_value=leak", "secret_env_name"),
        ("size=small&profile-option-small--x=y", "profile-option-small--x"),
        ("image=minimal:2025.2&colour=red", "colour"),
    ],
)
async def test_links_carry_only_image_size_cpu_memory_gpus(env, kube, query, field):
    user = new_user()
    await env.ensure_user(user)
    web = await env.login(user)
    try:
        offset = env.log_size()
        status, page = await web.get(f"/hub/spawn/{user}?{query}", allow_redirects=False)
        assert status == 400, page[:300]
        assert field in text_of(page, "aicoe-form-error")
        assert "leak" not in page and "PYTHONWARNINGS" not in page.split('id="aicoe-options"')[1]
        assert await user_pods(kube, env.namespace, user) == []
        assert (await server_model(env, user))["servers"] == {}
        logged = env.log_since(offset)
        assert "Traceback" not in logged and "leak" not in logged
        # One line says why (the request's own line aside).
        lines = [ln for ln in logged.splitlines() if "cannot be given in a link" in ln]
        assert len(lines) == 1, lines
    finally:
        await web.close()


async def test_a_link_opened_while_the_server_runs_says_so_and_offers_to_replace_it(env, kube):
    user = new_user()
    await env.ensure_user(user)
    status, body = await env.api(
        "POST", f"/users/{user}/server", json={"image": "minimal:2025.2", "size": "small"}
    )
    assert status in (201, 202), body
    await env.wait_ready(user)
    old = (await user_pods(kube, env.namespace, user))[0]
    web = await env.login(user)
    try:
        # The same choice as the running server: straight to it.
        status, _ = await web.get(
            f"/hub/spawn/{user}?image=minimal:2025.2&size=small", allow_redirects=False
        )
        assert status == 302
        link = f"/hub/spawn/{user}?image=datascience:1.0&size=medium"
        status, page = await web.get(link, allow_redirects=False)
        assert status == 200, page[:300]
        assert "minimal:2025.2" in text_of(page, "aicoe-running-now")
        assert "datascience:1.0" in text_of(page, "aicoe-running-wanted")
        assert 'name="_replace_running"' in page
        assert 'id="aicoe-go-running"' in page
        pods = await user_pods(kube, env.namespace, user)
        assert [p["metadata"]["uid"] for p in pods] == [old["metadata"]["uid"]]
        # Start without choosing to replace: still nothing happens to the running server.
        status, page = await web.post_form(
            user, [("image", "datascience:1.0"), ("size", "medium")], page_path=link
        )
        assert status == 409 and 'id="aicoe-running"' in page
        # "Stop my server and start this".
        status, _ = await web.post_form(
            user,
            [("image", "datascience:1.0"), ("size", "medium"), ("_replace_running", "1")],
            page_path=link,
        )
        assert status == 302
        await env.wait_ready(user)

        async def replaced():
            pods = await user_pods(kube, env.namespace, user)
            return len(pods) == 1 and pods[0]["metadata"]["uid"] != old["metadata"]["uid"]

        await wait_for(replaced, timeout=30)
        pod = (await user_pods(kube, env.namespace, user))[0]
        assert container(pod)["image"] == reference(env.namespace, "datascience", "1.0")
        assert pod["metadata"]["annotations"]["aicoe-spawner.io/size"] == "medium"
        await env.stop_server(user)
    finally:
        await web.close()


# -- a rejected form --------------------------------------------------------------------------


async def test_a_rejected_form_keeps_the_entries_shows_the_message_by_its_field_logs_one_line(
    env, kube
):
    user = new_user()
    await env.ensure_user(user)
    web = await env.login(user)
    try:
        offset = env.log_size()
        status, page = await web.post_form(
            user,
            [
                ("image", "datascience:1.0"),
                ("size", "medium"),
                ("cpu", "2.25"),
                ("memory", "1"),
                ("env_name", "KEEP_ME"),
                ("env_value", "typed value"),
                ("secret_env_name", "TOKEN"),
                ("secret_env_value", "do-not-echo-" + user),
            ],
        )
        assert status == 400
        assert "HTTP 400" not in page and "Error:" not in page
        assert "at least 256 MiB" in text_of(page, "aicoe-memory-error")
        assert field_value(page, "aicoe-memory") == "1"
        assert field_value(page, "aicoe-cpu") == "2.25"
        assert re.search(r'value="medium"\s+checked', page)
        assert re.search(r'<input[^>]*name="image"[^>]*value="datascience:1.0"[^>]*checked', page)
        assert 'value="KEEP_ME"' in page and 'value="typed value"' in page
        assert 'value="TOKEN"' in page and "do-not-echo" not in page
        assert await user_pods(kube, env.namespace, user) == []
        logged = env.log_since(offset)
        assert "Traceback" not in logged
        assert len([line for line in logged.splitlines() if "at least 256 MiB" in line]) == 1
        assert "do-not-echo" not in logged

        # An env error goes next to the variables.
        status, page = await web.post_form(
            user, [("env_name", "JUPYTERHUB_API_TOKEN"), ("env_value", "x")]
        )
        assert status == 400
        assert "JUPYTERHUB_API_TOKEN: is a reserved name" in text_of(page, "aicoe-env-error")
    finally:
        await web.close()


@pytest.mark.parametrize(
    ("options", "field", "words"),
    [
        ({"memory": "1"}, "memory", "at least 256 MiB"),
        ({"memory": "100m"}, "memory", "at least 256 MiB"),
        ({"cpu": "0.01"}, "cpu", "at least 0.1 CPU"),
    ],
)
async def test_minimums_hold_for_rest_and_links(env, kube, options, field, words):
    user = new_user()
    await env.ensure_user(user)
    offset = env.log_size()
    status, body = await env.api("POST", f"/users/{user}/server", json=options)
    assert status == 400 and body["message"].startswith(f"{field}: ") and words in body["message"]
    logged = env.log_since(offset)
    assert "Traceback" not in logged
    # JupyterHub's one "Error starting …" line, besides tornado's line for the request.
    lines = [ln for ln in logged.splitlines() if words in ln and "POST /hub/api/" not in ln]
    assert len(lines) == 1, lines
    web = await env.login(user)
    try:
        query = "&".join(f"{k}={v}" for k, v in options.items())
        status, page = await web.get(f"/hub/spawn/{user}?{query}", allow_redirects=False)
        assert status == 400 and words in text_of(page, f"aicoe-{field}-error")
    finally:
        await web.close()
    assert await user_pods(kube, env.namespace, user) == []


async def test_fine_cpu_values_start(env, kube):
    user = new_user()
    await env.ensure_user(user)
    status, body = await env.api("POST", f"/users/{user}/server", json={"cpu": "2.25"})
    assert status in (201, 202), body
    await env.wait_ready(user)
    pod = (await user_pods(kube, env.namespace, user))[0]
    assert container(pod)["resources"]["limits"]["cpu"] in ("2.25", "2250m")
    await env.stop_server(user)


@pytest.mark.parametrize("body", [b"[]", b"0", b"false", b'""', b"null", b'"x"'])
async def test_rest_bodies_that_are_not_objects_are_400(env, kube, body):
    user = new_user()
    await env.ensure_user(user)
    status, reply = await env.api("POST", f"/users/{user}/server", data=body)
    assert status == 400, reply
    assert "user_options" in reply["message"] or "JSON object" in reply["message"]
    assert await user_pods(kube, env.namespace, user) == []
    assert (await server_model(env, user))["servers"] == {}


# -- review findings --------------------------------------------------------------------------


async def test_group_overrides_apply_per_spawn(env, kube):
    user = new_user()
    await env.ensure_user(user, ["pool-a"])
    for in_group in (True, False, True):
        status, body = await env.api("POST", f"/users/{user}/server", json={})
        assert status in (201, 202), body
        await env.wait_ready(user)
        pod = (await user_pods(kube, env.namespace, user))[0]
        selector = pod["spec"].get("nodeSelector") or {}
        tolerations = pod["spec"].get("tolerations") or []
        if in_group:
            assert selector == {"pool": "a"}
            assert any(t.get("key") == "pool" for t in tolerations)
            assert pod["metadata"]["annotations"]["pool"] == "a"
        else:
            assert selector == {}
            assert not any(t.get("key") == "pool" for t in tolerations)
            assert "pool" not in pod["metadata"]["annotations"]
        await env.stop_server(user)
        if in_group:
            status, _ = await env.api("DELETE", "/groups/pool-a/users", json={"users": [user]})
        else:
            status, _ = await env.api("POST", "/groups/pool-a/users", json={"users": [user]})
        assert status == 200


async def read_secret(kube, namespace: str, name: str):
    try:
        return await client.CoreV1Api(kube).read_namespaced_secret(name, namespace)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


async def test_secret_env_secret_has_a_name_no_slug_makes_and_only_ours_is_replaced(env, kube):
    user = new_user()
    await env.ensure_user(user)
    status, body = await env.api(
        "POST", f"/users/{user}/server", json={"secret_env": {"TOKEN": "first"}}
    )
    assert status in (201, 202), body
    await env.wait_ready(user)
    pod = (await user_pods(kube, env.namespace, user))[0]
    pod_name = pod["metadata"]["name"]
    ref = {e["name"]: e for e in container(pod)["env"]}["TOKEN"]["valueFrom"]["secretKeyRef"]
    # KubeSpawner's slugs (pods, PVCs, internal-SSL Secrets) are [a-z0-9-]: a dot never is.
    assert ref["name"] == f"{pod_name}.secret-env"
    assert await read_secret(kube, env.namespace, f"{pod_name}-env") is None
    await env.stop_server(user)
    core = client.CoreV1Api(kube)

    # A Secret of that name that is not ours is left alone, and nothing starts.
    foreign = {
        "metadata": {"name": ref["name"], "labels": {"app": "someone-else"}},
        "stringData": {"KEEP": "theirs"},
    }
    await core.create_namespaced_secret(env.namespace, foreign)
    status, body = await env.api(
        "POST", f"/users/{user}/server", json={"secret_env": {"TOKEN": "second"}}
    )
    if status in (201, 202):
        await env.wait_stopped(user)
    else:
        assert status == 500, body
    kept = await read_secret(kube, env.namespace, ref["name"])
    assert kept is not None and base64.b64decode(kept.data["KEEP"]).decode() == "theirs"
    assert await user_pods(kube, env.namespace, user) == []
    assert "is not the secret env of" in env.log_tail(200)
    await core.delete_namespaced_secret(ref["name"], env.namespace)

    # A leftover of ours (a stop that did not finish) is replaced.
    leftover = {
        "metadata": {
            "name": ref["name"],
            "labels": {
                "app.kubernetes.io/managed-by": "aicoe-spawner",
                "component": "singleuser-secret-env",
            },
            "annotations": {"hub.jupyter.org/username": user, "aicoe-spawner.io/pod": pod_name},
        },
        "stringData": {"TOKEN": "stale"},
    }
    await core.create_namespaced_secret(env.namespace, leftover)
    status, body = await env.api(
        "POST", f"/users/{user}/server", json={"secret_env": {"TOKEN": "third"}}
    )
    assert status in (201, 202), body
    await env.wait_ready(user)
    secret = await read_secret(kube, env.namespace, ref["name"])
    assert base64.b64decode(secret.data["TOKEN"]).decode() == "third"
    await env.stop_server(user)


async def test_secret_values_are_in_no_api_response_while_a_spawn_is_pending(env, kube):
    user = new_user("held-")
    value = "pending-secret-" + uuid.uuid4().hex
    await env.ensure_user(user)
    options = {"image": "minimal:2025.2", "secret_env": {"K": value}}
    status, body = await env.api("POST", f"/users/{user}/server", json=options)
    assert status == 202, body
    seen_pending = 0
    for _ in range(20):
        status, model = await env.api("GET", f"/users/{user}")
        assert status == 200
        assert value not in json.dumps(model)
        server = model["servers"].get("")
        if server and server.get("pending") == "spawn":
            seen_pending += 1
            assert server["user_options"]["secret_env_names"] == ["K"]
            assert "secret_env" not in server["user_options"]
        status, one = await env.api("GET", f"/users/{user}/server")
        assert value not in json.dumps(one)
        status, users = await env.api("GET", "/users")
        assert value not in json.dumps(users)
        await asyncio.sleep(0.05)
    assert seen_pending > 0
    (env.workdir / f"release-{user}").write_text("")
    await env.wait_ready(user)
    pod = (await user_pods(kube, env.namespace, user))[0]
    assert value not in json.dumps(pod)
    _, model = await env.api("GET", f"/users/{user}")
    assert value not in json.dumps(model)
    events = await client.CoreV1Api(kube).list_namespaced_event(env.namespace)
    assert value not in json.dumps(client.ApiClient().sanitize_for_serialization(events))
    assert value not in env.log_path.read_text(errors="replace")
    await env.stop_server(user)
