"""`make demo` end to end: a newcomer logs in, picks an image and a size, and lands in
JupyterLab — driven in Debian's chromium."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser import CHROMIUM, CHROMIUM_ARGS
from playwright.sync_api import sync_playwright

from aicoe_spawner.devcluster.controlplane import free_port


@pytest.fixture
def demo(tmp_path: Path):
    port = free_port()
    log_path = tmp_path / "demo.log"
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aicoe_spawner.demo",
            "--port",
            str(port),
            "--workdir",
            str(tmp_path / "demo"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    started = time.monotonic()
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"demo exited with {proc.returncode}:\n{log_path.read_text()}")
            if "and log in with any name" in log_path.read_text():
                break
            if time.monotonic() - started > 120:
                raise AssertionError(f"demo not ready:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield url, started, log_path
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_demo_reaches_jupyterlab_in_chromium(demo, tmp_path):
    url, started, log_path = demo
    output = log_path.read_text()
    assert "LOCAL PROCESSES" in output  # the demo says plainly how pods run
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{url}/hub/login")
            page.fill("input[name=username]", "newcomer")
            page.fill("input[name=password]", "any")
            page.click("input[type=submit], button[type=submit]")
            page.wait_for_url("**/hub/spawn**", timeout=30_000)
            page.check('input[name=image][value="jupyter-datascience-notebook:2025.2"]')
            page.check("input[name=size][value=medium]")
            page.click("form#spawn_form [type=submit]")
            page.wait_for_url("**/user/newcomer/lab**", timeout=90_000)
            page.wait_for_selector("#jp-main-dock-panel", timeout=60_000)
            elapsed = time.monotonic() - started
            page.screenshot(path=str(tmp_path / "jupyterlab.png"))
        finally:
            browser.close()
    print(f"\ndemo start to a running JupyterLab in chromium: {elapsed:.1f} s")
    # The server really is a jupyterhub-singleuser process speaking the Jupyter Server API.
    with urllib.request.urlopen(f"{url}/hub/api/") as r:
        assert r.status == 200
