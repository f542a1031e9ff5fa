"""The options form in a real browser (Debian's chromium via playwright) against a real
JupyterHub, the real API server and the fake kubelet. Pods, Secrets and the hub database are
read back from where they live."""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import uuid
from itertools import count

import pytest_asyncio
from harness.browser import DESKTOP, NARROW, card, chromium, login, screenshot
from harness.hub import Hub, files_containing, running_hub
from harness.kube import (
    IMAGE_API,
    MERGE,
    container,
    create_imagestream,
    reference,
    set_ready,
    user_pods,
    wait_for,
)
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException
from playwright.async_api import expect

from aicoe_devcluster import delete_namespace

A = "opendatahub.io/"
DEFAULT = {f"{A}default-image": "true", f"{A}workbench-image-recommended": "true"}
XSS = '<img src=x onerror="window.__xss=1;alert(1)">'
XSS2 = "<script>window.__xss=2;alert(2)</script>"
XSS3 = "\"'><svg/onload=window.__xss=3>"
XSS_URL = 'https://example.com/"><svg/onload=window.__xss=4>'
# Ends the script element that embeds the form's JSON, if anything lets it through unescaped.
SCRIPT_END = "</script><script>window.__xss=6;alert(6)</script>"
SECRET = "s3cr3t-" + uuid.uuid4().hex

HUB_CONFIG = """
c.AICoESpawner.sizes = [
    {"name": "small", "display_name": "Small", "description": "For exploring",
     "cpu_guarantee": 0.5, "cpu_limit": 1, "mem_guarantee": "1Gi", "mem_limit": "2Gi",
     "default": True},
    {"name": "medium", "display_name": "Medium", "description": "For everyday work",
     "cpu_guarantee": 1, "cpu_limit": 2, "mem_guarantee": "2Gi", "mem_limit": "4Gi"},
    {"name": "large", "display_name": "Large", "cpu_guarantee": 2, "cpu_limit": 4,
     "mem_guarantee": "4Gi", "mem_limit": "8Gi",
     "profile_options": {"disk": {"display_name": "Local disk", "choices": {
         "hdd": {"display_name": "HDD", "kubespawner_override": {"node_selector": {"disk": "hdd"}}},
         "ssd": {"display_name": "SSD", "kubespawner_override": {"node_selector": {"disk": "ssd"}}},
     }}}},
]
c.AICoESpawner.default_policy = {"images": ["*"], "sizes": ["small", "medium"]}
c.AICoESpawner.group_policies = {"big": {"sizes": ["large"], "max_gpus": 2}}
c.AICoESpawner.allow_custom_resources = True
c.AICoESpawner.max_cpu = 4
c.AICoESpawner.max_memory = "8Gi"
c.AICoESpawner.reserved_env_names = ["ADMIN_ONLY"]
c.AICoESpawner.form_poll_interval = 0.5
"""

_users = count()


def new_user() -> str:
    return f"f{next(_users)}-{uuid.uuid4().hex[:4]}"


@pytest_asyncio.fixture(scope="module")
async def env(control_plane, kube, fake_kubelet, tmp_path_factory):
    """A namespace with a varied catalog (and hostile annotations), a hub and a browser."""
    ns = f"t-form-{uuid.uuid4().hex[:6]}"
    await client.CoreV1Api(kube).create_namespace({"metadata": {"name": ns}})
    software = json.dumps([{"name": "Python", "version": "3.12"}, {"name": "JupyterLab"}])
    await create_imagestream(
        kube,
        ns,
        "minimal",
        {
            "2025.2": {**DEFAULT, f"{A}notebook-software": software},
            "2025.1": {f"{A}notebook-software": software},
            "2024.2": {f"{A}image-tag-outdated": "true"},
            "next": {"aicoe-spawner.io/build-phase": "building"},
        },
        ready=["2025.2", "2025.1", "2024.2"],
        annotations={
            f"{A}notebook-image-name": "Minimal Python",
            f"{A}notebook-image-desc": "Python and JupyterLab, nothing else",
            f"{A}notebook-image-url": "https://github.com/example/minimal",
            f"{A}notebook-image-order": "1",
        },
    )
    await create_imagestream(
        kube,
        ns,
        "datascience",
        {
            "1.0": {
                f"{A}workbench-image-recommended": "true",
                f"{A}notebook-python-dependencies": json.dumps(
                    [{"name": "pandas", "version": "2.2"}, {"name": "scikit-learn"}]
                ),
            }
        },
        annotations={
            f"{A}notebook-image-name": "Data Science",
            f"{A}notebook-image-desc": "pandas, scikit-learn and friends",
            f"{A}notebook-image-order": "2",
        },
    )
    await create_imagestream(
        kube,
        ns,
        "pytorch",
        {"2.5": {}},
        annotations={
            f"{A}notebook-image-name": "PyTorch",
            f"{A}recommended-accelerators": '["nvidia.com/gpu"]',
            f"{A}notebook-image-order": "3",
        },
    )
    hostile_packages = json.dumps([{"name": XSS, "version": XSS2}, {"name": XSS3}])
    await create_imagestream(
        kube,
        ns,
        "xss.stream-1",
        {
            "v1.0_a-b": {
                f"{A}workbench-image-recommended": "true",
                f"{A}notebook-software": hostile_packages,
                f"{A}notebook-python-dependencies": hostile_packages,
                f"{A}notebook-build-commit": XSS2,
            },
            "broken": {
                "aicoe-spawner.io/build-phase": "failed",
                "aicoe-spawner.io/build-message": XSS,
            },
            "import": {},
        },
        ready=["v1.0_a-b"],
        annotations={
            f"{A}notebook-image-name": XSS,
            f"{A}notebook-image-desc": XSS2 + XSS3,
            f"{A}notebook-image-url": XSS_URL,
            f"{A}notebook-image-creator": XSS3,
            f"{A}recommended-accelerators": json.dumps([XSS2]),
            f"{A}notebook-image-order": "4",
        },
    )
    # An import error on a tag: its condition message is shown as the failure reason.
    await client.CustomObjectsApi(kube).patch_namespaced_custom_object_status(
        *IMAGE_API,
        ns,
        "imagestreams",
        "xss.stream-1",
        {
            "status": {
                "tags": [
                    {
                        "tag": "v1.0_a-b",
                        "items": [
                            {"dockerImageReference": reference(ns, "xss.stream-1", "v1.0_a-b")}
                        ],
                    },
                    {"tag": "import", "conditions": [{"status": "False", "message": XSS3}]},
                ]
            }
        },
        _content_type=MERGE,
    )
    await create_imagestream(
        kube,
        ns,
        "js-link",
        {"1": {}},
        annotations={f"{A}notebook-image-url": "javascript:window.__xss=5", "x": XSS},
    )
    # Failure messages (a build's, an import's) travel in the form's embedded JSON state.
    await create_imagestream(
        kube,
        ns,
        "script-end",
        {
            "v1": {f"{A}workbench-image-recommended": "true"},
            "broken": {
                "aicoe-spawner.io/build-phase": "failed",
                "aicoe-spawner.io/build-message": SCRIPT_END,
            },
            "import": {},
        },
        ready=[],
        annotations={
            f"{A}notebook-image-name": SCRIPT_END,
            f"{A}notebook-image-desc": SCRIPT_END,
            f"{A}notebook-image-order": "5",
        },
    )
    await client.CustomObjectsApi(kube).patch_namespaced_custom_object_status(
        *IMAGE_API,
        ns,
        "imagestreams",
        "script-end",
        {
            "status": {
                "tags": [
                    {
                        "tag": "v1",
                        "items": [{"dockerImageReference": reference(ns, "script-end", "v1")}],
                    },
                    {"tag": "import", "conditions": [{"status": "False", "message": SCRIPT_END}]},
                ]
            }
        },
        _content_type=MERGE,
    )
    for i in range(5):
        await create_imagestream(
            kube, ns, f"extra-{i}", {"1": {}}, annotations={f"{A}notebook-image-order": "50"}
        )
    async with (
        running_hub(
            tmp_path_factory.mktemp("formhub"), control_plane.kubeconfig, ns, HUB_CONFIG
        ) as hub,
        chromium() as browser,
    ):
        hub.browser = browser
        yield hub
    await delete_namespace(kube, ns)


def hub_files_contain(hub: Hub, needle: str) -> list[str]:
    """Names of the hub's files (database, journal, log) whose bytes contain ``needle``."""
    return files_containing(hub.workdir, needle)


async def read_secret(kube, namespace: str, name: str) -> dict | None:
    try:
        secret = await client.CoreV1Api(kube).read_namespaced_secret(name, namespace)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return client.ApiClient().sanitize_for_serialization(secret)


async def open_form(env: Hub, user: str, viewport=DESKTOP, groups=()):
    await env.ensure_user(user, list(groups))
    up = await login(env.browser, env.url, user, viewport)
    await up.page.goto(f"/hub/spawn/{user}")
    await expect(up.page.locator("#aicoe-options")).to_be_visible()
    return up


# -- the whole choice, including a secret ---------------------------------------------------


async def test_choose_everything_with_a_secret_and_start(env, kube):
    user = new_user()
    up = await open_form(env, user, groups=["big"])
    page = up.page
    try:
        minimal = card(page, "minimal")
        # The recommended (and default) tag is preselected and marked; outdated is not offered.
        versions = minimal.locator("select.aicoe-version")
        await expect(versions).to_have_value("minimal:2025.2")
        assert await versions.locator("option").all_inner_texts() == [
            "2025.2 (recommended)",
            "2025.1",
            "next \u2013 building",
        ]
        await expect(versions.locator('option[value="minimal:next"]')).to_be_disabled()
        await versions.select_option("minimal:2025.1")
        await expect(minimal.locator(".aicoe-image-radio")).to_be_checked()
        await page.get_by_label("Medium").check()
        await page.get_by_label("CPU cores").fill("1.5")
        await page.get_by_label("Number of GPUs").select_option("1")
        await page.locator(".aicoe-env-name").first.fill("FOO")
        await page.locator(".aicoe-env-value").first.fill("{username} $x")
        await page.get_by_role("button", name="Add variable").click()
        row = page.locator(".aicoe-env-row").nth(1)
        await expect(row.locator(".aicoe-env-name")).to_be_focused()
        await row.locator(".aicoe-env-name").fill("API_KEY")
        await row.locator(".aicoe-env-secret").check()
        await expect(row.locator(".aicoe-env-value")).to_have_attribute("type", "password")
        await row.locator(".aicoe-env-value").fill(SECRET)
        await screenshot(page, "options-form-desktop")
        await page.get_by_role("button", name="Start").click()
        await env.wait_ready(user)

        pod = (await user_pods(kube, env.namespace, user))[0]
        c = container(pod)
        assert c["image"] == reference(env.namespace, "minimal", "2025.1")
        res = c["resources"]
        assert res["requests"]["cpu"] in ("1.5", "1500m") and res["limits"]["cpu"] in (
            "1.5",
            "1500m",
        )
        assert int(res["limits"]["memory"]) == 4 * 2**30  # from the size
        assert res["limits"]["nvidia.com/gpu"] == "1"
        env_vars = {e["name"]: e for e in c["env"]}
        # Escaped for Kubernetes' $(VAR) expansion ($$ -> $): the container sees "{username} $x".
        assert env_vars["FOO"]["value"] == "{username} $$x"
        secret_name = f"{pod['metadata']['name']}.secret-env"
        assert env_vars["API_KEY"] == {
            "name": "API_KEY",
            "valueFrom": {"secretKeyRef": {"name": secret_name, "key": "API_KEY"}},
        }
        assert SECRET not in json.dumps(pod)
        secret = await read_secret(kube, env.namespace, secret_name)
        assert base64.b64decode(secret["data"]["API_KEY"]).decode() == SECRET
        owner = secret["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"]) == (
            "Pod",
            pod["metadata"]["name"],
            pod["metadata"]["uid"],
        )
        # Nowhere at the hub: not in its database (any file), its log, or its API.
        assert hub_files_contain(env, SECRET) == []
        db = sqlite3.connect(env.workdir / "jupyterhub.sqlite")
        try:
            stored = [json.loads(r[0]) for r in db.execute("select user_options from spawners")]
        finally:
            db.close()
        mine = [o for o in stored if o and o.get("secret_env_names") == ["API_KEY"]]
        assert mine and "secret_env" not in mine[0]
        _, model = await env.api("GET", f"/users/{user}")
        assert SECRET not in json.dumps(model)
        assert model["servers"][""]["user_options"]["secret_env_names"] == ["API_KEY"]

        await env.stop_server(user)

        async def secret_gone():
            return await read_secret(kube, env.namespace, secret_name) is None

        await wait_for(secret_gone, timeout=10)

        # The form remembers the last choices; the secret's name comes back, never its value.
        await page.goto(f"/hub/spawn/{user}")
        minimal = card(page, "minimal")
        await expect(minimal.locator(".aicoe-image-radio")).to_be_checked()
        await expect(minimal.locator("select.aicoe-version")).to_have_value("minimal:2025.1")
        await expect(page.get_by_label("Medium")).to_be_checked()
        await expect(page.get_by_label("CPU cores")).to_have_value("1.5")
        await expect(page.get_by_label("Number of GPUs")).to_have_value("1")
        names = page.locator(".aicoe-env-name")
        await expect(names).to_have_count(2)
        await expect(names.nth(0)).to_have_value("FOO")
        await expect(names.nth(1)).to_have_value("API_KEY")
        secret_row = page.locator(".aicoe-env-row").nth(1)
        await expect(secret_row.locator(".aicoe-env-secret")).to_be_checked()
        await expect(secret_row.locator(".aicoe-env-value")).to_have_value("")
        assert SECRET not in await page.content()
        assert up.errors == [] and up.dialogs == []
    finally:
        await up.close()


async def test_rest_secret_env_is_never_stored(env, kube):
    user = new_user()
    value = "rest-" + uuid.uuid4().hex
    await env.ensure_user(user)
    status, body = await env.api(
        "POST",
        f"/users/{user}/server",
        json={"image": "datascience:1.0", "secret_env": {"TOKEN": value}},
    )
    assert status in (201, 202), body
    await env.wait_ready(user)
    pod = (await user_pods(kube, env.namespace, user))[0]
    ref = {e["name"]: e for e in container(pod)["env"]}["TOKEN"]["valueFrom"]["secretKeyRef"]
    secret = await read_secret(kube, env.namespace, ref["name"])
    assert base64.b64decode(secret["data"][ref["key"]]).decode() == value
    assert value not in json.dumps(pod)
    assert hub_files_contain(env, value) == []
    _, model = await env.api("GET", f"/users/{user}")
    assert value not in json.dumps(model)
    await env.stop_server(user)
    # A spawn without secrets leaves no Secret behind.
    status, body = await env.api("POST", f"/users/{user}/server", json={})
    assert status in (201, 202), body
    await env.wait_ready(user)
    assert await read_secret(kube, env.namespace, ref["name"]) is None
    await env.stop_server(user)


async def test_links_refuse_secret_values(env, kube):
    user = new_user()
    await env.ensure_user(user)
    web = await env.login(user)
    try:
        status, page = await web.get(
            f"/hub/spawn/{user}?image=minimal:2025.2&secret_env_name=A&secret_env_value=leak"
        )
        assert status == 400 and "secret_env" in page
        assert "leak" not in page.split('id="aicoe-options"')[1]
        assert await user_pods(kube, env.namespace, user) == []
    finally:
        await web.close()


# -- live readiness ---------------------------------------------------------------------------


async def test_readiness_badge_flips_live_without_losing_input(env, kube):
    user = new_user()
    await create_imagestream(
        kube,
        env.namespace,
        "live",
        {"v1": {f"{A}workbench-image-recommended": "true"}},
        ready=[],
        annotations={f"{A}notebook-image-name": "Live Image", f"{A}notebook-image-order": "0"},
    )
    up = await open_form(env, user)
    page = up.page
    try:
        live = card(page, "live")
        # The list of versions is loaded when opened; open, it follows the changes too.
        await live.locator("details.aicoe-versions summary").click()
        await expect(live.locator(".aicoe-tag-badge")).to_have_text("pending")
        await expect(live.locator(".aicoe-selected-badge .badge")).to_have_text("pending")
        await expect(live.locator(".aicoe-image-radio")).to_be_disabled()
        await expect(live.locator('option[value="live:v1"]')).to_be_disabled()
        # The user is typing meanwhile.
        await page.get_by_label("Medium").check()
        await page.locator(".aicoe-env-name").first.fill("KEEP_ME")
        await page.locator(".aicoe-env-value").first.fill("typed")
        await page.locator(".aicoe-env-value").first.focus()
        await page.evaluate("window.__marker = 'same page'")

        await set_ready(kube, env.namespace, "live", ["v1"])
        await expect(live.locator(".aicoe-selected-badge .badge")).to_have_text(
            "ready", timeout=10_000
        )
        await expect(live.locator(".aicoe-tag-badge")).to_have_text("ready")
        await expect(live.locator('option[value="live:v1"]')).to_be_enabled()
        await expect(live.locator(".aicoe-image-radio")).to_be_enabled()
        # No reload: same page, input and focus kept.
        assert await page.evaluate("window.__marker") == "same page"
        await expect(page.locator(".aicoe-env-name").first).to_have_value("KEEP_ME")
        await expect(page.locator(".aicoe-env-value").first).to_have_value("typed")
        await expect(page.locator(".aicoe-env-value").first).to_be_focused()
        await expect(page.get_by_label("Medium")).to_be_checked()

        # A new image appears in place, the choice and the input stay.
        await card(page, "datascience").locator(".aicoe-image-radio").check()
        await create_imagestream(kube, env.namespace, "appeared", {"1": {}}, annotations={"x": "y"})
        await expect(card(page, "appeared")).to_have_count(1, timeout=10_000)
        await expect(card(page, "datascience").locator(".aicoe-image-radio")).to_be_checked()
        await expect(page.locator(".aicoe-env-value").first).to_have_value("typed")
        assert await page.evaluate("window.__marker") == "same page"

        # Live data is text too: a hostile failure message arrives as text.
        await client.CustomObjectsApi(kube).patch_namespaced_custom_object(
            *IMAGE_API,
            env.namespace,
            "imagestreams",
            "live",
            {
                "spec": {
                    "tags": [
                        {
                            "name": "v1",
                            "annotations": {
                                "aicoe-spawner.io/build-phase": "failed",
                                "aicoe-spawner.io/build-message": XSS,
                            },
                        }
                    ]
                }
            },
            _content_type=MERGE,
        )
        await expect(live.locator(".aicoe-tag-badge")).to_have_text("failed", timeout=10_000)
        await expect(live.locator(".aicoe-tag-message")).to_have_text(XSS)
        await expect(live.locator(".aicoe-image-radio")).to_be_disabled()
        assert await page.evaluate("typeof window.__xss") == "undefined"
        assert up.errors == [] and up.dialogs == []
    finally:
        await up.close()


# -- launch link --------------------------------------------------------------------------------


async def test_launch_link_reproduces_the_choice_for_another_user(env, kube):
    alice, bob = new_user(), new_user()
    up = await open_form(env, alice, groups=["big"])
    try:
        page = up.page
        await card(page, "minimal").locator("select.aicoe-version").select_option("minimal:2025.1")
        await page.get_by_label("Large").check()
        await page.get_by_label("Number of GPUs").select_option("2")
        await page.get_by_role("button", name="Copy link").click()
        await expect(page.locator("#aicoe-copy-status")).not_to_be_empty()
        link = await page.locator("#aicoe-link").input_value()
        assert link == f"{env.url}/hub/spawn?image=minimal%3A2025.1&size=large&gpus=2"
    finally:
        await up.close()

    await env.ensure_user(bob, ["big"])
    other = await login(env.browser, env.url, bob)
    try:
        # Opening the link shows what it starts, and starts nothing until bob presses Start.
        await other.page.goto(link)
        notice = other.page.locator("#aicoe-link-notice")
        await expect(notice).to_contain_text("minimal:2025.1, size large, 2 GPUs")
        assert await user_pods(kube, env.namespace, bob) == []
        _, model = await env.api("GET", f"/users/{bob}")
        assert model["servers"] == {}
        await expect(other.page.get_by_label("Large")).to_be_checked()
        await expect(other.page.get_by_label("Number of GPUs")).to_have_value("2")
        await other.page.get_by_role("button", name="Start").click()
        await env.wait_ready(bob)
        pod = (await user_pods(kube, env.namespace, bob))[0]
        assert container(pod)["image"] == reference(env.namespace, "minimal", "2025.1")
        ann = pod["metadata"]["annotations"]
        assert (ann["aicoe-spawner.io/size"], ann["aicoe-spawner.io/gpus"]) == ("large", "2")
        assert container(pod)["resources"]["limits"]["nvidia.com/gpu"] == "2"
        await env.stop_server(bob)
    finally:
        await other.close()


# -- hostile catalog data ---------------------------------------------------------------------


async def test_xss_payloads_render_as_text(env, kube):
    user = new_user()
    up = await open_form(env, user)
    page = up.page
    try:
        xss = card(page, "xss.stream-1")
        await expect(xss.locator("label.form-check-label")).to_have_text(XSS)
        await expect(xss.locator(".aicoe-accelerator")).to_have_text(f"recommends {XSS2}")
        assert XSS2 + XSS3 in await xss.inner_text()
        await expect(xss.locator("a.aicoe-source")).to_have_attribute("href", XSS_URL)
        for details in await xss.locator("details").all():
            await details.locator("summary").click()
        await expect(xss.locator(".aicoe-tag[data-ref$='broken'] .aicoe-tag-message")).to_have_text(
            XSS
        )
        await expect(xss.locator(".aicoe-tag[data-ref$='import'] .aicoe-tag-message")).to_have_text(
            XSS3
        )
        packages = await xss.locator(".aicoe-tag-packages:not([hidden]) li").all_inner_texts()
        assert f"{XSS} {XSS2}" in packages and XSS3 in [p.strip() for p in packages]
        # The build commit, shortened to 12 characters.
        assert f"commit {XSS2[:12]}" in await xss.locator(".aicoe-versions").inner_text()
        # A javascript: URL is never a link.
        await expect(card(page, "js-link").locator("a")).to_have_count(0)
        # Nothing injected became an element, and no script ran.
        for tag in ("img", "svg"):
            assert await page.locator(f"#aicoe-options {tag}").count() == 0
        assert await page.locator("#aicoe-options script").count() == 3  # our own
        # The form's JSON islands keep working with hostile strings.
        await xss.locator(".aicoe-image-radio").check()
        link = await page.locator("#aicoe-link").input_value()
        assert "image=xss.stream-1%3Av1.0_a-b" in link
        await page.wait_for_timeout(1500)  # a few live-update polls
        assert await page.evaluate("typeof window.__xss") == "undefined"
        assert up.dialogs == [] and up.errors == []
        # And it spawns (stream and tag names with dots, dashes and underscores).
        await page.get_by_role("button", name="Start").click()
        await env.wait_ready(user)
        pod = (await user_pods(kube, env.namespace, user))[0]
        assert container(pod)["image"] == reference(env.namespace, "xss.stream-1", "v1.0_a-b")
        await env.stop_server(user)
    finally:
        await up.close()


async def test_script_end_in_failure_messages_stays_inside_the_embedded_json(env, kube):
    """A build or import failure message holding ``</script>`` is data in the form's JSON
    state (which the live updates parse again on every poll), never the end of its element."""
    user = new_user()
    up = await open_form(env, user)
    page = up.page
    try:
        await page.wait_for_timeout(1500)  # a few live-update polls parse the state again
        assert await page.evaluate("typeof window.__xss") == "undefined"
        assert up.dialogs == [] and up.errors == []
        assert await page.locator("#aicoe-options script").count() == 3  # our own
        hostile = card(page, "script-end")
        await expect(hostile.locator("label.form-check-label")).to_have_text(SCRIPT_END)
        for details in await hostile.locator("details").all():
            await details.locator("summary").click()
        for ref in ("broken", "import"):
            await expect(
                hostile.locator(f".aicoe-tag[data-ref$='{ref}'] .aicoe-tag-message")
            ).to_have_text(SCRIPT_END)
    finally:
        await up.close()

    # The page as served: the messages are whole strings inside the JSON.
    web = await env.login(user)
    try:
        page_html = await web.spawn_page(user)
    finally:
        await web.close()
    form = page_html.split('id="aicoe-options"', 1)[1]
    island = re.search(r'<script type="application/json" id="aicoe-state">(.*?)</script>', form)
    assert island, form[:2000]
    tags = json.loads(island.group(1))["tags"]
    assert tags["script-end:broken"] == {"phase": "failed", "message": SCRIPT_END}
    assert tags["script-end:import"] == {"phase": "failed", "message": SCRIPT_END}
    assert "<script>window.__xss" not in page_html


# -- validation as you type, keyboard, narrow screens -------------------------------------------


async def test_env_rows_and_resources_are_checked_as_you_type(env, kube):
    user = new_user()
    up = await open_form(env, user)
    page = up.page
    try:
        name = page.locator(".aicoe-env-name").first
        error = page.locator(".aicoe-env-row .invalid-feedback").first
        await name.fill("1BAD")
        await expect(error).to_be_visible()
        await expect(error).to_contain_text("digit")
        await name.fill("A-B")
        await expect(error).to_contain_text("letters, digits and _")
        await name.fill("JUPYTERHUB_API_URL")
        await expect(error).to_contain_text("reserved")
        await name.fill("ADMIN_ONLY")
        await expect(error).to_contain_text("reserved")
        await name.fill("DUP")
        await expect(error).to_be_hidden()
        # Keyboard only: Tab to "Add variable", Enter adds a row and focuses its name.
        await page.get_by_role("button", name="Add variable").focus()
        await page.keyboard.press("Enter")
        second = page.locator(".aicoe-env-name").nth(1)
        await expect(second).to_be_focused()
        await page.keyboard.type("DUP")
        await expect(page.locator(".aicoe-env-row .invalid-feedback").nth(1)).to_contain_text(
            "more than once"
        )
        await expect(error).to_contain_text("more than once")
        # The secret box is reachable by keyboard and switches the row to secret fields.
        await page.keyboard.press("Tab")
        await page.keyboard.type("x")
        await page.keyboard.press("Tab")
        await page.keyboard.press("Space")
        row = page.locator(".aicoe-env-row").nth(1)
        await expect(row.locator(".aicoe-env-value")).to_have_attribute("name", "secret_env_value")
        await expect(row.locator(".aicoe-env-name")).to_have_attribute("name", "secret_env_name")
        # Remove by keyboard: focus goes to a sensible place.
        await page.keyboard.press("Tab")
        await page.keyboard.press("Enter")
        await expect(page.locator(".aicoe-env-row")).to_have_count(1)
        await expect(error).to_be_hidden()
        # Custom resources: bounds enforced in the page.
        await page.get_by_label("CPU cores").fill("99")
        await expect(page.locator("#aicoe-cpu-error")).to_contain_text("At most 4 CPU")
        await page.get_by_label("Memory", exact=True).fill("9Gi")
        await expect(page.locator("#aicoe-memory-error")).to_contain_text("At most 8 GiB")
        await page.get_by_label("Memory", exact=True).fill("8 Gi")
        await expect(page.locator("#aicoe-memory-error")).to_contain_text("quantity")
        # An invalid form is not submitted: no request leaves the browser (the live-update
        # polls are GETs of the page from a script; a submission is a POST or a navigation).
        sent = []

        def record(request):
            if request.method != "GET" or request.is_navigation_request():
                sent.append(f"{request.method} {request.url}")

        page.on("request", record)
        await page.get_by_role("button", name="Start").click()
        await page.wait_for_timeout(2000)
        page.remove_listener("request", record)
        assert sent == []
        assert f"/hub/spawn/{user}" in page.url
        assert await user_pods(kube, env.namespace, user) == []
        await page.get_by_label("CPU cores").fill("2")
        await page.get_by_label("Memory", exact=True).fill("3Gi")
        await expect(page.locator("#aicoe-memory")).not_to_have_class("is-invalid")
        # Every input has a label.
        unlabeled = await page.evaluate(
            """() => [...document.querySelectorAll('#aicoe-options input, #aicoe-options select')]
                .filter(el => el.type !== 'hidden' && !(el.labels && el.labels.length)
                        && !el.getAttribute('aria-label'))
                .map(el => el.outerHTML)"""
        )
        assert unlabeled == []
        assert up.errors == []
    finally:
        await up.close()


async def test_cpu_takes_any_value_within_bounds_with_inline_messages(env, kube):
    user = new_user()
    up = await open_form(env, user)
    page = up.page
    try:
        cpu, memory = page.get_by_label("CPU cores"), page.get_by_label("Memory", exact=True)
        await cpu.fill("0.05")
        await expect(page.locator("#aicoe-cpu-error")).to_have_text("At least 0.1 CPU.")
        await memory.fill("100Mi")
        await expect(page.locator("#aicoe-memory-error")).to_have_text("At least 256 MiB.")
        await page.get_by_role("button", name="Start").click()
        await expect(page.locator("#aicoe-cpu-error")).to_be_visible()
        assert await user_pods(kube, env.namespace, user) == []
        await cpu.fill("2.25")
        await memory.fill("3Gi")
        await expect(cpu).not_to_have_class("is-invalid")
        assert await cpu.evaluate("el => el.validity.valid")
        await page.get_by_role("button", name="Start").click()
        await env.wait_ready(user)
        pod = (await user_pods(kube, env.namespace, user))[0]
        assert container(pod)["resources"]["limits"]["cpu"] in ("2.25", "2250m")
        await env.stop_server(user)
        assert up.errors == []
    finally:
        await up.close()


async def test_a_choice_the_server_rejects_comes_back_with_the_entries_and_the_message(env, kube):
    user = new_user()
    up = await open_form(env, user)
    page = up.page
    try:
        await page.get_by_label("Medium").check()
        await page.get_by_label("CPU cores").fill("1.25")
        await page.locator(".aicoe-env-name").first.fill("KEEP_ME")
        await page.locator(".aicoe-env-value").first.fill("typed")
        # Past the page's own checks (as a script or an old page would post).
        await page.get_by_label("Memory", exact=True).fill("1")
        await page.evaluate("document.getElementById('spawn_form').submit()")
        # The server's own message, by the field it is about.
        await expect(page.locator("#aicoe-memory-error")).to_have_text(
            "memory: must be at least 256 MiB, got '1'"
        )
        await expect(page.locator("#aicoe-memory-error")).to_be_visible()
        await expect(page.get_by_label("Memory", exact=True)).to_have_value("1")
        await expect(page.get_by_label("CPU cores")).to_have_value("1.25")
        await expect(page.get_by_label("Medium")).to_be_checked()
        await expect(page.locator(".aicoe-env-name").first).to_have_value("KEEP_ME")
        await expect(page.locator(".aicoe-env-value").first).to_have_value("typed")
        assert "HTTP 400" not in await page.content()
        await expect(page.locator(".spawn-error-msg")).to_have_count(0)
        assert await user_pods(kube, env.namespace, user) == []
        # Fixing the field clears the message and starts.
        await page.get_by_label("Memory", exact=True).fill("2Gi")
        await expect(page.locator("#aicoe-memory-error")).to_be_hidden()
        await page.get_by_role("button", name="Start").click()
        await env.wait_ready(user)
        pod = (await user_pods(kube, env.namespace, user))[0]
        assert int(container(pod)["resources"]["limits"]["memory"]) == 2 * 2**30
        await env.stop_server(user)
        assert up.errors == []
    finally:
        await up.close()


async def test_a_refused_link_says_so_first_and_ties_each_message_to_its_field(env, kube):
    """The hidden acceptance run's links: the summary is in the first screen and has the
    focus, each message names its field and is the control's description."""
    user = new_user()
    await env.ensure_user(user, ["big"])  # up to 2 GPUs: the GPU select is there
    up = await login(env.browser, env.url, user, DESKTOP)
    page = up.page
    try:
        for query, field, control in (
            ("gpus=7", "gpus", "aicoe-gpus"),
            ("cpu=NaN", "cpu", "aicoe-cpu"),
        ):
            response = await page.goto(f"/hub/spawn/{user}?{query}")
            assert response.status == 400
            summary = page.locator("#aicoe-error-summary")
            await expect(summary).to_be_focused()
            await expect(summary.get_by_role("heading")).to_have_text(
                "This link was refused: nothing was started."
            )
            top, bottom, screen = await summary.evaluate(
                "el => { const r = el.getBoundingClientRect();"
                " return [r.top + scrollY, r.bottom + scrollY, innerHeight]; }"
            )
            assert 0 <= top and bottom <= screen, (top, bottom, screen)  # no scrolling needed
            message = page.locator(f"#aicoe-{field}-error")
            await expect(message).to_have_text(re.compile(rf"^{field}: must be .*"))
            await expect(message).to_be_visible()
            described = await page.locator(f"#{control}").get_attribute("aria-describedby")
            assert f"aicoe-{field}-error" in described.split(), described
            await expect(page.locator(f"#{control}")).to_have_attribute("aria-invalid", "true")
            # the summary lists the message and its link takes the focus to the control
            link = summary.get_by_role("link")
            await expect(link).to_have_text(await message.inner_text())
            await link.click()
            await expect(page.locator(f"#{control}")).to_be_focused()
            await screenshot(page, f"refused-link-{field}")
        assert await user_pods(kube, env.namespace, user) == []
        assert up.errors == [] and up.dialogs == []
    finally:
        await up.close()


async def test_a_size_option_is_part_of_the_form(env, kube):
    user = new_user()
    up = await open_form(env, user, groups=["big"])
    page = up.page
    try:
        disk = page.get_by_label("Local disk")
        await expect(disk).to_have_value("hdd")  # the first choice is the default
        await disk.select_option("ssd")
        await expect(page.get_by_label("Large")).to_be_checked()
        await page.get_by_role("button", name="Start").click()
        await env.wait_ready(user)
        pod = (await user_pods(kube, env.namespace, user))[0]
        assert pod["spec"]["nodeSelector"] == {"disk": "ssd"}
        _, model = await env.api("GET", f"/users/{user}")
        assert model["servers"][""]["user_options"]["size_options"] == {"disk": "ssd"}
        await env.stop_server(user)
        # The form remembers the choice.
        await page.goto(f"/hub/spawn/{user}")
        await expect(page.get_by_label("Local disk")).to_have_value("ssd")
        assert up.errors == []
    finally:
        await up.close()


async def test_narrow_screen_filter_and_accelerator_hint(env, kube):
    user = new_user()
    up = await open_form(env, user, viewport=NARROW)
    page = up.page
    try:
        width = await page.evaluate("document.documentElement.scrollWidth")
        wide = await page.evaluate(
            """() => [...document.querySelectorAll('body *')]
                .filter(el => el.getBoundingClientRect().right > 376)
                .map(el => el.tagName + '.' + el.className + '#' + el.id + ' '
                     + Math.round(el.getBoundingClientRect().right)).slice(0, 15)"""
        )
        assert width <= NARROW["width"], (width, wide)
        await screenshot(page, "options-form-narrow")
        # More than eight images: a filter box.
        box = page.get_by_label("Filter images")
        await box.fill("pandas")
        await expect(page.locator(".aicoe-image-card:visible")).to_have_count(1)
        await expect(card(page, "datascience")).to_be_visible()
        await box.fill("zzz-nothing")
        await expect(page.locator("#aicoe-filter-empty")).to_be_visible()
        await box.fill("")
        await expect(card(page, "minimal")).to_be_visible()
        # An image that recommends an accelerator says so (this user may not request GPUs).
        await card(page, "pytorch").locator(".aicoe-image-radio").check()
        await expect(page.locator("#aicoe-gpu-hint")).to_contain_text(
            "recommends an accelerator (nvidia.com/gpu)"
        )
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= NARROW["width"], width
    finally:
        await up.close()
