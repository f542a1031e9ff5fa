"""The lean options form with 1,000 images x 5 tags, in chromium against a real hub: choosing,
filtering, the lists opened on demand, live readiness without losing input, the page as served
(gzip, the later cards in <noscript> chunks) and the same form without JavaScript.

Speed is measured by benchmarks/bench_page.py; nothing here depends on how fast it is."""

from __future__ import annotations

import asyncio
import gzip
import json
import uuid
from itertools import count

import aiohttp
import pytest_asyncio
from harness.browser import DESKTOP, NARROW, card, chromium, login
from harness.hub import Hub, _input_value, running_hub
from harness.kube import IMAGE_API, MERGE, create_imagestream, reference, user_pods
from kubernetes_asyncio import client
from playwright.async_api import expect

from aicoe_devcluster import delete_namespace

A = "opendatahub.io/"
STREAMS = 1000
TAGS = ["2023.2", "2024.1", "2024.2", "2025.1", "2025.2"]
HUB_CONFIG = """
c.AICoESpawner.form_poll_interval = 0.5
c.AICoESpawner.catalog_sync_timeout = 60
"""

_users = count()


def name(i: int) -> str:
    return f"nb-{i:04d}"


def new_user() -> str:
    return f"s{next(_users)}-{uuid.uuid4().hex[:4]}"


async def one_stream(kube, ns: str, i: int) -> None:
    packages = json.dumps(
        [{"name": "numpy", "version": "2.1"}, {"name": f"pkg-{i:04d}", "version": "1"}]
    )
    tags = {t: {f"{A}notebook-python-dependencies": packages} for t in TAGS}
    tags[TAGS[-1]][f"{A}workbench-image-recommended"] = "true"
    if i == 0:
        tags[TAGS[-1]][f"{A}default-image"] = "true"
    await create_imagestream(
        kube,
        ns,
        name(i),
        tags,
        annotations={
            f"{A}notebook-image-name": f"Notebook {i:04d}",
            f"{A}notebook-image-desc": f"Scale test image {i}",
            f"{A}notebook-image-order": "100",
        },
    )


@pytest_asyncio.fixture(scope="module")
async def env(control_plane, kube, fake_kubelet, tmp_path_factory):
    ns = f"t-scale-{uuid.uuid4().hex[:6]}"
    await client.CoreV1Api(kube).create_namespace({"metadata": {"name": ns}})
    for start in range(0, STREAMS, 50):
        await asyncio.gather(*(one_stream(kube, ns, i) for i in range(start, start + 50)))
    async with (
        running_hub(
            tmp_path_factory.mktemp("scalehub"), control_plane.kubeconfig, ns, HUB_CONFIG
        ) as hub,
        chromium() as browser,
    ):
        hub.browser = browser
        yield hub
    await delete_namespace(kube, ns)


async def open_form(env: Hub, user: str, viewport=DESKTOP):
    await env.ensure_user(user)
    up = await login(env.browser, env.url, user, viewport)
    await up.page.goto(f"/hub/spawn/{user}")
    await expect(up.page.locator("#aicoe-options")).to_be_visible()
    return up


async def set_status(kube, ns: str, stream: str, ready: list[str]) -> None:
    status = {
        "tags": [
            {"tag": t, "items": [{"dockerImageReference": reference(ns, stream, t)}]} for t in ready
        ]
    }
    await client.CustomObjectsApi(kube).patch_namespaced_custom_object_status(
        *IMAGE_API, ns, "imagestreams", stream, {"status": status}, _content_type=MERGE
    )


async def test_page_is_served_compressed_with_later_cards_in_noscript_chunks(env):
    user = new_user()
    await env.ensure_user(user)
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True), auto_decompress=False
    ) as session:
        async with session.get(f"{env.url}/hub/login") as r:
            xsrf = _input_value(await r.text(), "_xsrf")
        async with session.post(
            f"{env.url}/hub/login?next=",
            data={"username": user, "password": "x", "_xsrf": xsrf},
            allow_redirects=False,
        ) as r:
            assert r.status == 302
        async with session.get(
            f"{env.url}/hub/spawn/{user}", headers={"Accept-Encoding": "gzip"}
        ) as r:
            assert r.status == 200
            assert r.headers["Content-Encoding"] == "gzip"
            assert "Accept-Encoding" in r.headers["Vary"]
            body = await r.read()
        async with session.get(
            f"{env.url}/hub/spawn/{user}", headers={"Accept-Encoding": "identity"}
        ) as r:
            assert r.status == 200 and "Content-Encoding" not in r.headers
            plain = await r.read()
    page = gzip.decompress(body)
    # One gzip stream of the same page (the xsrf token in the form's URL differs per request).
    assert page.count(b'class="card mb-2 aicoe-image-card"') == STREAMS
    assert plain.count(b'class="card mb-2 aicoe-image-card"') == STREAMS
    assert len(body) < len(page) / 5
    # The first cards are elements; the others travel in <noscript> chunks, and no card
    # carries its version or package lists (loaded when opened).
    form = page.split(b'id="aicoe-image-list"', 1)[1]
    assert form.index(b'<noscript class="aicoe-more"') > form.index(b"nb-0029")
    assert b'<div class="aicoe-tag-packages' not in page
    assert b'<li class="aicoe-tag ' not in page


async def test_choose_filter_and_start_at_1000_images(env, kube):
    user = new_user()
    up = await open_form(env, user)
    page = up.page
    try:
        await expect(page.locator("#aicoe-options")).to_have_attribute(
            "data-cards", "all", timeout=30_000
        )
        await expect(card(page, "nb-0000").locator(".aicoe-image-radio")).to_be_checked()
        # At most 20 cards are shown until the user asks for all of them.
        await expect(page.locator(".aicoe-image-card:visible")).to_have_count(20)
        show_all = page.get_by_role("button", name="Show all images")
        await show_all.focus()
        await page.keyboard.press("Enter")
        await expect(page.locator(".aicoe-image-card:visible")).to_have_count(STREAMS)
        await expect(page.locator("#aicoe-filter-count")).to_have_text(f"{STREAMS} images")
        # Filtering by name and by a package only one image has.
        box = page.get_by_label("Filter images")
        await box.fill("pkg-0777")
        await expect(page.locator(".aicoe-image-card:visible")).to_have_count(1)
        await expect(page.locator("#aicoe-filter-count")).to_have_text(
            f"1 of {STREAMS} images match"
        )
        await box.fill("nb-050")
        await expect(page.locator(".aicoe-image-card:visible")).to_have_count(10)
        # 100 matches: the first 20 shown (8 at once, the rest in idle time), in order.
        await box.fill("nb-01")
        await expect(page.locator(".aicoe-image-card:visible")).to_have_count(20)
        shown = await page.locator(".aicoe-image-card:visible").evaluate_all(
            "cards => cards.map(c => c.dataset.stream.split('/').pop())"
        )
        assert shown == [name(n) for n in range(100, 120)], shown
        show_matches = page.get_by_role("button", name="Show all 100 matching images")
        await expect(show_matches).to_be_visible()
        await box.fill("nb-0777")
        chosen = card(page, "nb-0777")
        await expect(chosen).to_be_visible()
        await expect(page.locator(".aicoe-image-card:visible")).to_have_count(1)
        # The lists are loaded when opened.
        await chosen.locator("details.aicoe-versions summary").click()
        await expect(chosen.locator(".aicoe-tag")).to_have_count(len(TAGS))
        await chosen.locator("details.aicoe-software summary").click()
        await expect(chosen.locator(".aicoe-tag-packages:not([hidden]) li")).to_have_text(
            ["numpy 2.1", "pkg-0777 1"]
        )
        versions = chosen.locator("select.aicoe-version")
        await expect(versions).to_have_value(f"{name(777)}:2025.2")
        await versions.select_option(f"{name(777)}:2024.2")
        await expect(chosen.locator(".aicoe-image-radio")).to_be_checked()
        await expect(chosen.locator(".aicoe-tag-packages:not([hidden])")).to_have_attribute(
            "data-ref", f"{name(777)}:2024.2"
        )
        assert "image=nb-0777%3A2024.2" in await page.locator("#aicoe-link").input_value()
        # Clearing the filter keeps the choice shown.
        await box.fill("")
        await expect(chosen).to_be_visible()
        await page.get_by_role("button", name="Start").click()
        await env.wait_ready(user)
        pod = (await user_pods(kube, env.namespace, user))[0]
        image = pod["spec"]["containers"][0]["image"]
        assert image == reference(env.namespace, name(777), "2024.2")
        await env.stop_server(user)
        assert up.errors == [] and up.dialogs == []
    finally:
        await up.close()


async def test_live_readiness_and_new_images_at_1000_images_keep_the_input(env, kube):
    user = new_user()
    up = await open_form(env, user)
    page = up.page
    try:
        await expect(page.locator("#aicoe-options")).to_have_attribute(
            "data-cards", "all", timeout=30_000
        )
        target = card(page, "nb-0003")
        await target.locator("details.aicoe-versions summary").click()
        await expect(target.locator(".aicoe-tag")).to_have_count(len(TAGS))
        await page.get_by_label("Medium").check()
        await page.locator(".aicoe-env-name").first.fill("KEEP_ME")
        await page.locator(".aicoe-env-value").first.fill("typed")
        await page.locator(".aicoe-env-value").first.focus()
        await page.evaluate("window.__marker = 'same page'")
        # Only what changed travels: count the bytes of the live updates from here on.
        sizes = []

        async def record(request):
            if "/hub/aicoe/form-state/" in request.url:
                s = await request.sizes()
                sizes.append(s["responseBodySize"])

        page.on("requestfinished", lambda r: asyncio.ensure_future(record(r)))

        # 2025.1 of nb-0003 stops being ready: the page says so, live.
        await set_status(kube, env.namespace, name(3), [t for t in TAGS if t != "2025.1"])
        option = target.locator(f'option[value="{name(3)}:2025.1"]')
        await expect(option).to_be_disabled(timeout=10_000)
        await expect(option).to_have_text("2025.1 \u2013 pending")
        badge = target.locator(".aicoe-tag[data-ref$=':2025.1'] .aicoe-tag-badge")
        await expect(badge).to_have_text("pending")
        # ... and ready again.
        await set_status(kube, env.namespace, name(3), TAGS)
        await expect(option).to_be_enabled(timeout=10_000)
        await expect(badge).to_have_text("ready")
        # An image that appears lands in its place in the catalog order.
        await create_imagestream(
            kube,
            env.namespace,
            "appeared",
            {"1": {}},
            annotations={f"{A}notebook-image-name": "Notebook 0003a", "x": "y"},
        )
        appeared = card(page, "appeared")
        await expect(appeared).to_have_count(1, timeout=10_000)
        assert await appeared.evaluate(
            "el => el.previousElementSibling.dataset.stream.endsWith('/nb-0003')"
        )
        # A deleted one goes.
        await client.CustomObjectsApi(kube).delete_namespaced_custom_object(
            *IMAGE_API, env.namespace, "imagestreams", name(999)
        )
        await expect(card(page, "nb-0999")).to_have_count(0, timeout=10_000)
        # Nothing the user typed was lost, and the page was never reloaded.
        assert await page.evaluate("window.__marker") == "same page"
        await expect(page.locator(".aicoe-env-name").first).to_have_value("KEEP_ME")
        await expect(page.locator(".aicoe-env-value").first).to_have_value("typed")
        await expect(page.locator(".aicoe-env-value").first).to_be_focused()
        await expect(page.get_by_label("Medium")).to_be_checked()
        await expect(card(page, "nb-0000").locator(".aicoe-image-radio")).to_be_checked()
        # No live update carried the catalog: each was a small answer.
        await asyncio.sleep(0.5)
        assert sizes and max(sizes) < 2048, sizes
        assert up.errors == [] and up.dialogs == []
    finally:
        await up.close()
        await client.CustomObjectsApi(kube).delete_namespaced_custom_object(
            *IMAGE_API, env.namespace, "imagestreams", "appeared"
        )
        await one_stream(kube, env.namespace, 999)


async def test_the_form_works_without_javascript_and_at_375px(env, kube):
    user = new_user()
    await env.ensure_user(user)
    # A browser without JavaScript.
    context = await env.browser.new_context(
        viewport=NARROW, base_url=env.url, java_script_enabled=False
    )
    try:
        page = await context.new_page()
        await page.goto("/hub/login")
        await page.fill("#username_input", user)
        await page.fill("#password_input", "x")
        await page.click("#login_submit")
        await page.wait_for_url(lambda url: "/hub/login" not in url)
        await page.goto(f"/hub/spawn/{user}")
        # Every card is an element (the <noscript> chunks are shown), labelled and choosable.
        await expect(page.locator(".aicoe-image-card")).to_have_count(STREAMS)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= NARROW["width"], width
        await page.get_by_label("Notebook 0555", exact=True).check()
        await page.get_by_label("Medium").check()
        await page.get_by_role("button", name="Start").click()
        await env.wait_ready(user)
        pod = (await user_pods(kube, env.namespace, user))[0]
        assert pod["spec"]["containers"][0]["image"] == reference(
            env.namespace, name(555), "2025.2"
        )
        assert pod["metadata"]["annotations"]["aicoe-spawner.io/size"] == "medium"
        await env.stop_server(user)
    finally:
        await context.close()
