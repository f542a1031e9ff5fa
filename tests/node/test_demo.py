"""`make demo` end to end, as a newcomer walks it in Debian's chromium: log in, open the image
builder, paste the demo's Dockerfile repository, watch the build, Launch, and find the
repository's notebook in JupyterLab running from the built image; then another user follows a
launch link to the other example repository, never built: Build and launch, the spawn page,
Start, its notebook in JupyterLab. Ctrl-C then leaves nothing running. Screenshots of each
step go to test-artifacts/demo/."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
from harness.browser import CHROMIUM, CHROMIUM_ARGS
from playwright.sync_api import expect, sync_playwright

from aicoe_devcluster.controlplane import REPO_ROOT, free_port
from aicoe_devcluster.node import processes_mentioning

pytestmark = pytest.mark.node

ARTIFACTS = REPO_ROOT / "test-artifacts" / "demo"
USER = "newcomer"
LINK_USER = "follower"  # opens a launch link from a README


@pytest.fixture
def demo(tmp_path: Path):
    port = free_port()
    workdir = tmp_path / "demo"
    log_path = tmp_path / "demo.log"
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "aicoe_devcluster.demo", "--port", str(port), "--workdir", workdir],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    started = time.monotonic()
    try:
        while "and log in with any name" not in log_path.read_text():
            if proc.poll() is not None:
                raise AssertionError(f"demo exited with {proc.returncode}:\n{log_path.read_text()}")
            if time.monotonic() - started > 900:
                raise AssertionError(f"demo not ready:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", started, log_path, workdir
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    assert proc.returncode == 0, log_path.read_text()[-3000:]
    assert "stopped; nothing left running" in log_path.read_text()
    assert processes_mentioning(str(workdir)) == []


@pytest.mark.timeout(1200)  # real builds and image pulls on a shared 2-core machine
def test_newcomer_builds_a_repository_and_launches_it_in_jupyterlab(demo):
    url, started, log_path, _ = demo
    output = log_path.read_text()
    ready_s = time.monotonic() - started
    repo = re.search(r"example repository\s+(\S+)\s+\(dockerfile-notebook\)", output).group(1)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    timings = {"demo start → ready": ready_s}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/hub/login")
            page.fill("input[name=username]", USER)
            page.fill("input[name=password]", "any")
            page.click("input[type=submit], button[type=submit]")
            page.wait_for_url("**/hub/spawn**", timeout=30_000)
            # the spawn page points at the builder
            page.get_by_role("link", name=re.compile("Build an image from a repository")).click()
            page.wait_for_url("**/services/image-builder/**", timeout=30_000)
            expect(page.locator("h1")).to_have_text("Build a notebook image")
            page.screenshot(path=ARTIFACTS / "1-builder-page.png")

            page.get_by_label("Repository URL").fill(repo)
            page.get_by_label("Tag, branch or commit").fill("v1")
            pasted = time.monotonic()
            page.get_by_role("button", name="Build").click()
            row = page.locator("#builds tr", has_text="dockerfile-notebook")
            expect(row).to_have_count(1)
            expect(page.locator("#detail-log")).to_contain_text("==> fetching", timeout=120_000)
            page.screenshot(path=ARTIFACTS / "2-building.png")
            launch = row.get_by_role("link", name=re.compile("^Launch"))
            expect(launch).to_be_visible(timeout=600_000)
            timings["paste → image ready"] = time.monotonic() - pasted
            page.screenshot(path=ARTIFACTS / "3-ready.png")

            clicked = time.monotonic()
            launch.click()
            page.wait_for_url(re.compile(r".*/(hub/spawn|user/).*"), timeout=30_000)
            if "/hub/spawn" in page.url and "pending" not in page.url:
                # the link shows what will start; the user confirms
                page.screenshot(path=ARTIFACTS / "4-spawn-page.png")
                page.locator("form#spawn_form [type=submit]").click()
            page.wait_for_url(f"**/user/{USER}/lab**", timeout=300_000)
            page.wait_for_selector(".jp-DirListing-item", timeout=120_000)
            page.locator(".jp-DirListing-itemText", has_text="hello.ipynb").dblclick()
            rendered = page.locator(".jp-Notebook .jp-RenderedMarkdown h1")
            expect(rendered).to_contain_text("Hello from a Dockerfile build", timeout=60_000)
            # the notebook's kernel runs in the built image too
            expect(page.locator(".jp-StatusBar-TextItem", has_text="Idle")).to_be_visible(
                timeout=120_000
            )
            timings["Launch → notebook in JupyterLab"] = time.monotonic() - clicked
            page.screenshot(path=ARTIFACTS / "5-jupyterlab.png")
            assert errors == [], errors

            # a README's launch link, followed by another user, for a repository never built:
            # the form filled in, Build and launch, its progress, then the spawn page on the
            # image, Start, and the repository's notebook in JupyterLab
            source = re.search(r"example repository\s+(\S+)\s+\(source-notebook\)", output)
            link = f"{url}/services/image-builder/launch?" + urlencode(
                {"repo": source.group(1), "ref": "v1"}
            )
            other = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            other.on("pageerror", lambda e: errors.append(str(e)))
            other.goto(f"{url}/hub/login")
            other.fill("input[name=username]", LINK_USER)
            other.fill("input[name=password]", "any")
            other.click("input[type=submit], button[type=submit]")
            other.wait_for_url("**/hub/spawn**", timeout=30_000)
            followed = time.monotonic()
            other.goto(link)
            expect(other.locator("#repo")).to_have_value(source.group(1))
            expect(other.locator("#build-button")).to_have_text("Build and launch")
            assert not other.locator("#builds tr", has_text="source-notebook").count()
            other.click("#build-button")
            expect(other.locator("#builds tr", has_text="source-notebook")).to_have_count(1)
            other.screenshot(path=ARTIFACTS / "6-launch-link-building.png")
            other.wait_for_url(re.compile(r".*/hub/spawn\?image="), timeout=600_000)
            timings["launch link → spawn page on the built image"] = time.monotonic() - followed
            other.screenshot(path=ARTIFACTS / "7-launch-link-spawn-page.png")
            other.locator("form#spawn_form [type=submit]").click()
            other.wait_for_url(f"**/user/{LINK_USER}/lab**", timeout=300_000)
            other.wait_for_selector(".jp-DirListing-item", timeout=120_000)
            other.locator(".jp-DirListing-itemText", has_text="analysis.ipynb").dblclick()
            expect(other.locator(".jp-Notebook .jp-RenderedMarkdown h1")).to_contain_text(
                "Hello from a source-to-image build", timeout=60_000
            )
            timings["launch link → notebook in JupyterLab"] = time.monotonic() - followed
            other.screenshot(path=ARTIFACTS / "8-launch-link-jupyterlab.png")
            assert errors == [], errors
        finally:
            browser.close()
    print("\n" + "\n".join(f"{k}: {v:.1f} s" for k, v in timings.items()))
