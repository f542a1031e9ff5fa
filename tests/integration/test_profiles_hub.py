"""profileList means what it means under KubeSpawner (issue 21, item 5), through a real hub,
the real API server and the fake kubelet: a profile's own image starts (pinned where the
catalog knows it), an unlisted choice the admin's regex allows starts, one it refuses is a 400
naming the field with no pod, and ``mem_limit: 2G`` is 2 GiB on the pod while a profile that
says nothing of ``mem_guarantee`` keeps the configured one."""

from __future__ import annotations

import html
import uuid
from itertools import count

import pytest
import pytest_asyncio
from harness.hub import in_process_spawner, running_hub, spawn_one_pod
from harness.kube import container, create_imagestream, reference, user_pods
from kubernetes_asyncio import client

from aicoe_devcluster import delete_namespace
from aicoe_spawner.options import parse_memory

A = "opendatahub.io/"
N = "aicoe-spawner.io/"
DEFAULT = {f"{A}default-image": "true", f"{A}workbench-image-recommended": "true"}
OWN_IMAGE = "quay.io/example/own-image:1.0"
ALLOWED = "quay.io/allowed/custom:2"

PROFILE_LIST = [
    {
        "display_name": "Own image",
        "slug": "own",
        "default": True,
        "kubespawner_override": {"image": OWN_IMAGE, "mem_limit": "2G", "cpu_limit": 1},
    },
    {
        "display_name": "Pinned by the catalog",
        "slug": "known",
        "kubespawner_override": {"image": "minimal:2025.2"},
    },
    {
        "display_name": "Bring your image",
        "slug": "free",
        "profile_options": {
            "image": {
                "display_name": "Image",
                "choices": {
                    "base": {
                        "display_name": "Base",
                        "kubespawner_override": {"image": "quay.io/allowed/base:1"},
                    }
                },
                "unlisted_choice": {
                    "enabled": True,
                    "display_name": "Image reference",
                    "validation_regex": r"^quay\.io/allowed/[a-z0-9-]+:[a-z0-9.]+$",
                    "validation_message": "An image from quay.io/allowed",
                    "kubespawner_override": {"image": "{value}"},
                },
            }
        },
    },
    {"display_name": "From the catalog", "slug": "catalog"},
]
# As z2jh's jupyterhub_config.py does with singleuser.profileList and singleuser.memory.
HUB_CONFIG = f"""
c.KubeSpawner.profile_list = {PROFILE_LIST!r}
c.KubeSpawner.mem_guarantee = "1G"
"""

_users = count()


def new_user() -> str:
    return f"pr{next(_users)}-{uuid.uuid4().hex[:4]}"


@pytest_asyncio.fixture(scope="module")
async def env(control_plane, kube, fake_kubelet, tmp_path_factory):
    ns = f"t-prof-{uuid.uuid4().hex[:6]}"
    await client.CoreV1Api(kube).create_namespace({"metadata": {"name": ns}})
    await create_imagestream(kube, ns, "minimal", {"2025.2": DEFAULT})
    async with running_hub(
        tmp_path_factory.mktemp("profileshub"), control_plane.kubeconfig, ns, HUB_CONFIG
    ) as hub:
        yield hub
    await delete_namespace(kube, ns)


spawn = spawn_one_pod


async def test_a_profile_image_starts_with_2G_as_2GiB_and_the_configured_guarantee(env, kube):
    user = new_user()
    await env.ensure_user(user)
    pod = await spawn(env, kube, user, {"profile": "own"})
    assert container(pod)["image"] == OWN_IMAGE
    resources = container(pod)["resources"]
    assert parse_memory(resources["limits"]["memory"]) == 2147483648
    # the profile says nothing of mem_guarantee: c.KubeSpawner.mem_guarantee ("1G") holds
    assert parse_memory(resources["requests"]["memory"]) == 2**30
    notes = pod["metadata"]["annotations"]
    assert notes[f"{N}image-source"] == "profile"
    assert notes[f"{N}image-requested"] == OWN_IMAGE
    assert notes[f"{N}image-resolution"].startswith("as-given: not in the image catalog")
    assert notes[f"{N}size"] == "own"
    _, model = await env.api("GET", f"/users/{user}")
    saved = model["servers"][""]["user_options"]
    assert saved["profile"] == "own" and "image" not in saved
    await env.stop_server(user)


async def test_a_profile_image_the_catalog_knows_starts_pinned(env, kube):
    user = new_user()
    await env.ensure_user(user)
    pod = await spawn(env, kube, user, {"profile": "known"})
    assert container(pod)["image"] == reference(env.namespace, "minimal", "2025.2")
    notes = pod["metadata"]["annotations"]
    assert notes[f"{N}image-resolution"].startswith("catalog: ")
    assert notes[f"{N}image-stream"] == f"{env.namespace}/minimal"
    assert notes[f"{N}image-digest"] == reference(env.namespace, "minimal", "2025.2").split("@")[1]
    await env.stop_server(user)


async def test_the_form_shows_profiles_that_bring_their_image_and_starts_an_unlisted_choice(
    env, kube
):
    user = new_user()
    await env.ensure_user(user)
    web = await env.login(user)
    try:
        page = await web.spawn_page(user)
        assert 'name="profile"' in page  # KubeSpawner's field: the form posts its flat shape
        assert "Own image" in page and html.escape(OWN_IMAGE) in page
        assert 'name="profile-option-free--image--unlisted-choice"' in page
        assert 'value="unlisted-choice"' in page and "An image from quay.io/allowed" in page
        # A link to a size with its own image shows what starts and starts nothing.
        status, linked = await web.get(f"/hub/spawn/{user}?size=own", allow_redirects=False)
        assert status == 200, linked[:2000]
        assert "own image, size own" in linked
        assert await user_pods(kube, env.namespace, user) == []
        status, _ = await web.post_form(
            user,
            [
                ("image", "minimal:2025.2"),  # the catalog picker is posted too, and not used
                ("profile", "free"),
                ("profile-option-free--image", "unlisted-choice"),
                ("profile-option-free--image--unlisted-choice", ALLOWED),
            ],
        )
        assert status == 302, env.log_tail(30)
        await env.wait_ready(user)
    finally:
        await web.close()
    pod = (await user_pods(kube, env.namespace, user))[0]
    assert container(pod)["image"] == ALLOWED
    notes = pod["metadata"]["annotations"]
    assert notes[f"{N}image-source"] == "unlisted"
    assert notes[f"{N}size-options"] == f"image--unlisted-choice={ALLOWED}"
    await env.stop_server(user)


@pytest.mark.parametrize(
    "typed", ["docker.io/evil/miner:1", "quay.io/allowed/x:1 --privileged", "quay.io/allowed/{x}:1"]
)
async def test_an_unlisted_choice_the_regex_refuses_is_400_and_no_pod(env, kube, typed):
    user = new_user()
    await env.ensure_user(user)
    field = "size_options.image--unlisted-choice"
    status, body = await env.api(
        "POST", f"/users/{user}/server", json={"profile": "free", "image--unlisted-choice": typed}
    )
    assert status == 400 and body["message"].startswith(f"{field}: "), body
    web = await env.login(user)
    try:
        status, page = await web.post_form(
            user, [("profile", "free"), ("profile-option-free--image--unlisted-choice", typed)]
        )
    finally:
        await web.close()
    assert status == 400
    assert html.escape(f"{field}: ") in page
    assert await user_pods(kube, env.namespace, user) == []


# -- load_user_options() called directly, as KubeSpawner's own tests call it ------------------

KS_PROFILES = [
    {
        "display_name": "Training Env - R",
        "slug": "training-r",
        "kubespawner_override": {
            "image": "training/r:label",
            "cpu_limit": 1,
            "mem_limit": 512 * 1024 * 1024,
            "environment": {"override": "override-value", "to-remove": None},
        },
    },
    PROFILE_LIST[2],
]


async def test_load_user_options_called_directly_applies_the_profile(
    control_plane, kube, namespace, monkeypatch
):
    from kubernetes_asyncio.config import kube_config

    from aicoe_spawner.spawner import AICoESpawner, OptionsRejected
    from aicoe_spawner.watch import ImageStreamWatch

    # KubeSpawner loads the default kubeconfig when a spawner is constructed.
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(control_plane.kubeconfig))
    selector = "opendatahub.io/notebook-image=true"
    watch = ImageStreamWatch.shared((namespace,), selector, lambda: client.CustomObjectsApi(kube))
    try:
        assert await watch.wait_synced(30)
        spawner = in_process_spawner(AICoESpawner, "direct", namespace, profile_list=KS_PROFILES)
        spawner.environment = {"existing": "existing-value", "to-remove": "x"}
        spawner.user_options = {"profile": "training-r"}
        assert spawner.cpu_limit is None  # nothing is loaded yet
        await spawner.load_user_options()
        assert (spawner.image, spawner.cpu_limit, spawner.mem_limit) == (
            "training/r:label",
            1,
            512 * 1024 * 1024,
        )
        assert spawner.environment == {"existing": "existing-value", "override": "override-value"}

        spawner.user_options = spawner.options_from_form(
            {"profile": ["free"], "profile-option-free--image--unlisted-choice": [ALLOWED]}
        )
        assert spawner.user_options == {"profile": "free", "image--unlisted-choice": ALLOWED}
        await spawner.load_user_options()
        assert spawner.image == ALLOWED

        spawner.user_options = {"profile": "free", "image--unlisted-choice": "invalid/foo:1"}
        with pytest.raises(ValueError) as e:  # KubeSpawner raises ValueError here too
            await spawner.load_user_options()
        assert isinstance(e.value, OptionsRejected)
        assert str(e.value.error).startswith("size_options.image--unlisted-choice: ")
    finally:
        await ImageStreamWatch.stop_all()


# -- the form in a real browser --------------------------------------------------------------


async def test_the_form_in_a_browser_types_an_unlisted_choice_and_marks_own_images(env, kube):
    from harness.browser import chromium, login
    from playwright.async_api import expect

    user = new_user()
    await env.ensure_user(user)
    async with chromium() as browser:
        up = await login(browser, env.url, user)
        page = up.page
        try:
            await page.goto(f"/hub/spawn/{user}")
            note = page.locator("#aicoe-own-image-note")
            await expect(page.get_by_label("Own image", exact=True)).to_be_checked()  # default
            await expect(note).to_be_visible()
            await page.get_by_label("From the catalog", exact=True).check()
            await expect(note).to_be_hidden()
            typed = page.get_by_label("Image reference")
            await expect(typed).to_be_disabled()  # only with "Other..." chosen
            await page.get_by_label("Image", exact=True).select_option("unlisted-choice")
            await expect(page.get_by_label("Bring your image", exact=True)).to_be_checked()
            await expect(typed).to_be_enabled()
            await expect(note).to_be_visible()
            await typed.fill(ALLOWED)
            await page.get_by_role("button", name="Start").click()
            await env.wait_ready(user)
            pod = (await user_pods(kube, env.namespace, user))[0]
            assert container(pod)["image"] == ALLOWED
            assert up.errors == []
        finally:
            await up.close()
    await env.stop_server(user)
