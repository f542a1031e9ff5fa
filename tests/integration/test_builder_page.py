"""The builder's web page in a real browser (Debian's chromium via playwright): logged in to a
real JupyterHub, through the service's OAuth round trip, submitting builds that the harness
really builds (buildah against the loopback registry), watching the phase and the log live, and
rendering hostile text as text."""

from __future__ import annotations

import re
import secrets
import uuid
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
import pytest_asyncio
from harness.browser import chromium, login, screenshot
from harness.builder import BuilderEnv, BuilderStack, start_builder_hub
from harness.git import GitServer
from harness.registry import Registry, push_base_image
from kubernetes_asyncio import client
from playwright.async_api import expect

from aicoe_devcluster import delete_namespace
from aicoe_devcluster.controlplane import free_port

pytestmark = pytest.mark.integration
PREFIX = "/services/image-builder/"
XSS = "<img src=x onerror=window.__xss=1>"
XSS2 = "<script>window.__xss=2</script>"
TIMEOUT = 45_000  # ms, for a real buildah build


@pytest_asyncio.fixture(scope="module")
async def env(kube, control_plane, fake_kubelet, tmp_path_factory):
    """A hub with the builder registered as an OAuth service, the builder, git, a registry and
    one browser for the module."""
    tmp_path = tmp_path_factory.mktemp("builder-page")
    namespace = f"t-bpage-{uuid.uuid4().hex[:6]}"
    await client.CoreV1Api(kube).create_namespace({"metadata": {"name": namespace}})
    git = GitServer(tmp_path / "git")
    registry = Registry(tmp_path / "registry")
    base = push_base_image(registry, tmp_path)
    token = secrets.token_hex(16)
    port = free_port()
    hub = await start_builder_hub(
        control_plane, namespace, tmp_path, token, port, builders=("alice",), viewers=("eve",)
    )
    stack = BuilderStack(
        kube,
        namespace,
        registry.host,
        tmp_path,
        token=token,
        hub_url=hub.url,
        port=port,
        kubelet=fake_kubelet,
        prefix=PREFIX,
        oauth_redirect_uri=f"{PREFIX}oauth_callback",  # as the hub registers it
        max_per_user=4,
        max_total=10,
    )
    runner = stack.runner
    async with chromium() as browser:
        yield BuilderEnv(
            kube=kube,
            namespace=namespace,
            hub=hub,
            git=git,
            base=base,
            runner=runner,
            page_url=f"{hub.url}{PREFIX}",  # through the hub's proxy, as users reach it
            browser=browser,
        )
    await stack.stop()
    await hub.stop()
    registry.stop()
    git.stop()
    await delete_namespace(kube, namespace)


async def open_page(e, user: str):
    """Log ``user`` in to the hub, then open the builder page (hub OAuth round trip)."""
    up = await login(e.browser, e.hub.url, user)
    # let the hub's post-login redirects settle: they set the session cookie the service's
    # OAuth token and XSRF token are bound to
    # (the spawn page keeps a live-update request open, so the network never goes idle)
    await up.page.wait_for_load_state("load")
    response = await up.page.goto(e.page_url)
    return up, response


async def test_page_requires_the_build_scope(env):
    e = env
    # a user who may access the service but not submit builds: 403 from the page itself
    up, response = await open_page(e, "eve")
    try:
        assert up.page.url == e.page_url  # the OAuth round trip completed
        assert response.status == 403
        body = await up.page.text_content("body")
        assert "custom:image-builder:build" in body and "Build a notebook image" not in body
    finally:
        await up.close()
    # a user who may not even access the service: the hub refuses the OAuth authorization
    up, response = await open_page(e, "mallory")
    try:
        assert response.status == 403
        assert "Build a notebook image" not in await up.page.content()
    finally:
        await up.close()


async def test_page_submits_a_build_and_shows_phase_and_log_live(env):
    e = env
    e.git.create_repo(
        "page-nb", {"Dockerfile": f"FROM {e.base}\nRUN echo page-line-one\n"}, tag="v1"
    )
    up, response = await open_page(e, "alice")
    page = up.page
    try:
        assert response.status == 200 and page.url == e.page_url
        await expect(page.locator("#login_widget")).to_contain_text("alice")
        await expect(page.locator("h1")).to_have_text("Build a notebook image")
        await page.evaluate("window.__loaded = 'once'")  # no reload may happen below
        e.runner.paused = True
        await page.fill("input[name=repo]", e.git.url("page-nb"))
        await page.fill("input[name=ref]", "v1")
        await page.get_by_text("Build options").click()  # the options are folded away
        await page.get_by_label("Strategy").select_option("dockerfile")
        await page.click("#build-button")
        await expect(page.locator("#form-message")).to_have_text(
            re.compile(r"^Build of \S+: pending$")
        )
        row = page.locator("#builds tr", has_text="page-nb")
        await expect(row).to_have_count(1)
        phase = row.locator("td").nth(3)
        await expect(phase).to_have_text("pending")
        # the harness now runs the Job's buildah command; the page follows without a reload
        e.runner.paused = False
        log = page.locator("#detail-log")
        await expect(log).to_contain_text("page-line-one", timeout=TIMEOUT)
        await expect(phase).to_have_text("ready", timeout=TIMEOUT)
        await expect(page.locator("#form-message")).to_have_text(
            re.compile(r"^Build of \S+: ready$")
        )
        await expect(log).to_contain_text("==> pushed", timeout=TIMEOUT)
        assert await page.evaluate("window.__loaded") == "once"
        # Details replays the finished build's log from the start
        await page.evaluate("document.getElementById('detail-log').textContent = ''")
        await row.get_by_role("button", name=re.compile("^Details")).click()
        await expect(log).to_contain_text("page-line-one")
        await expect(log).to_contain_text("==> pushed")
        launch = row.get_by_role("link", name=re.compile("^Launch"))
        href = await launch.get_attribute("href")
        assert href.startswith("/hub/spawn?image=") and "page-nb" in href
        await screenshot(page, "builder-page")
        assert up.errors == [] and up.dialogs == []
    finally:
        e.runner.paused = False
        await up.close()


async def test_page_renders_hostile_text_as_text(env):
    e = env
    # a ref the validator refuses: its message echoes the payload, shown as text
    up, _ = await open_page(e, "alice")
    page = up.page
    try:
        e.git.create_repo(
            "page-xss",
            {"Dockerfile": f"FROM {e.base}\nRUN echo '{XSS}' && echo '{XSS2}'\n"},
            tag="v1",
        )
        await page.fill("input[name=repo]", e.git.url("page-xss"))
        await page.fill("input[name=ref]", XSS)
        await page.click("#build-button")
        await expect(page.locator("#form-message")).to_contain_text(XSS)
        assert await page.locator("#form-message img").count() == 0
        # a repository whose build log carries markup: the log shows it verbatim
        await page.fill("input[name=ref]", "v1")
        await page.click("#build-button")
        log = page.locator("#detail-log")
        await expect(log).to_contain_text(XSS, timeout=TIMEOUT)
        await expect(log).to_contain_text(XSS2, timeout=TIMEOUT)
        await expect(page.locator("#builds tr", has_text="page-xss")).to_have_count(1)
        assert (
            await page.locator("#image-builder img, #detail-log script, #builds script").count()
            == 0
        )
        assert await page.evaluate("typeof window.__xss") == "undefined"
        assert up.errors == [] and up.dialogs == []
    finally:
        await up.close()


async def arrived_at_spawn_page(page) -> None:
    """Wait until the hub's spawn page has loaded (the launch page's own navigation ended)."""
    await page.wait_for_url(re.compile(r"/hub/spawn\?image="), wait_until="load", timeout=TIMEOUT)


async def test_a_launch_link_fills_the_form_then_opens_the_spawn_page_when_ready(env):
    """The README badge's link (``?repo=…&ref=…``): opening it builds nothing; the form is
    filled in, Build and launch builds, and when the image is ready the browser goes to the
    hub's spawn page on it. The ready build's details give the link and the badge."""
    e = env
    e.git.create_repo(
        "launch-nb", {"Dockerfile": f"FROM {e.base}\nRUN echo launch-line-one\n"}, tag="v1"
    )
    repo = e.git.url("launch-nb")
    up = await login(e.browser, e.hub.url, "alice")
    page = up.page
    try:
        await page.wait_for_load_state("load")
        link = f"{e.page_url}launch?{urlencode({'repo': repo, 'ref': 'v1'})}"
        await page.goto(link)
        await expect(page.locator("#repo")).to_have_value(repo)
        await expect(page.locator("#ref")).to_have_value("v1")
        await expect(page.locator("#build-button")).to_have_text("Build and launch")
        await expect(page.locator("#form-message")).to_contain_text(f"build {repo} at v1")
        assert not await page.locator("#builds tr", has_text="launch-nb").count()
        async with page.expect_request(
            lambda r: "/hub/spawn?image=" in r.url and r.is_navigation_request(),
            timeout=TIMEOUT,
        ) as spawn:
            await page.click("#build-button")
        image = parse_qs(urlparse((await spawn.value).url).query)["image"][0]
        await arrived_at_spawn_page(page)
        assert image.split("/", 1)[1].startswith("launch-nb")
        # the ready build gives its launch link and badge
        await page.goto(e.page_url)
        row = page.locator("#builds tr", has_text="launch-nb")
        await row.get_by_role("button", name=re.compile("^Details")).click()
        facts = page.locator("#detail-facts")
        await expect(facts).to_contain_text(link)
        await expect(facts).to_contain_text(f"static/launch-badge.svg)]({link})")
        badge = await page.request.get(f"{e.page_url}static/launch-badge.svg")
        assert badge.status == 200 and "launch: JupyterHub" in await badge.text()
        # the same link again: straight to the spawn page (where the user presses Start)
        async with page.expect_request(
            lambda r: "/hub/spawn?image=" in r.url and r.is_navigation_request(),
            timeout=TIMEOUT,
        ) as again:
            # the launch page moves on to the spawn page at once: wait for the first answer
            # only, or the goto is "interrupted by another navigation" (its own)
            await page.goto(link, wait_until="commit")
        assert parse_qs(urlparse((await again.value).url).query)["image"][0] == image
        # the request is sent before the page commits: a goto now would be "interrupted"
        await arrived_at_spawn_page(page)
        # a repository the builder does not build from: a refusal page that says why
        refused = await page.goto(
            f"{e.page_url}launch?{urlencode({'repo': 'https://evil.example/x', 'ref': 'v1'})}"
        )
        assert refused.status in (400, 403), refused.status
        assert "This link cannot be built: repo:" in await page.text_content("body")
        # hostile parameters are values and text, never markup
        await page.goto(f"{e.page_url}?{urlencode({'repo': XSS, 'ref': XSS2})}")
        await expect(page.locator("#repo")).to_have_value(XSS)
        await expect(page.locator("#form-message")).to_contain_text(XSS2)
        assert await page.evaluate("window.__xss") is None
        assert up.errors == [] and up.dialogs == []
    finally:
        await up.close()
