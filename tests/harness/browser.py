"""Debian's chromium driven by playwright, for browser tests of the options form.

Playwright cannot download browsers here: it launches /usr/bin/chromium. Every page records
dialogs (and dismisses them) and page errors, so tests can assert that no injected script ran.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.async_api import Browser, BrowserContext, Page, async_playwright

CHROMIUM = os.environ.get("AICOE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 900}
NARROW = {"width": 375, "height": 812}
REPO = Path(__file__).resolve().parents[2]
# Test runs write screenshots to the ignored test-artifacts/; `make screenshots` points this at
# docs/screenshots to refresh the documentation's images.
SCREENSHOTS = REPO / os.environ.get("AICOE_SCREENSHOTS_DIR", "test-artifacts/screenshots")


@asynccontextmanager
async def chromium():
    """A headless chromium for the duration of the block."""
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class UserPage:
    """A logged-in user's browser page and what it saw."""

    context: BrowserContext
    page: Page
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def close(self) -> None:
        await self.context.close()


async def login(browser: Browser, hub_url: str, user: str, viewport=DESKTOP) -> UserPage:
    """A new browser context logged in to the hub as ``user`` (dummy authenticator)."""
    context = await browser.new_context(viewport=viewport, base_url=hub_url)
    page = await context.new_page()
    up = UserPage(context, page)

    async def on_dialog(dialog):
        up.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda e: up.errors.append(str(e)))
    await page.goto("/hub/login")
    await page.fill("#username_input", user)
    await page.fill("#password_input", "x")
    await page.click("#login_submit")
    await page.wait_for_url(lambda url: "/hub/login" not in url)
    return up


async def screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as <name>.png in SCREENSHOTS (test-artifacts/screenshots/
    unless AICOE_SCREENSHOTS_DIR says otherwise)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


def card(page, stream: str):
    """The options form's card of image ``stream`` (its name, any namespace)."""
    return page.locator(f'.aicoe-image-card[data-stream$="/{stream}"]')
