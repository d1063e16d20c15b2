"""Headless Chromium (Debian ``chromium``) driven by Playwright: the fixture the browser tests share.

Import it into a test module (``from browser import browser, sync_api``). A missing Chromium or
Playwright is a failure, not a skip: the UI is part of the product and these tests are how it is checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright import sync_api

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required"]  # fmt: skip


# Module scope, not session: each importing module gets its own copy of the fixture, and two live
# sync_playwright() instances in one process refuse to run.
@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"headless Chromium not found at {CHROMIUM}: apt-get install -y chromium")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: sync_api.Browser, base_url: str) -> tuple[sync_api.BrowserContext, sync_api.Page, list[str]]:
    """A fresh context and page; JavaScript errors are collected for the test to assert none happened."""
    context = browser.new_context(base_url=base_url, viewport={"width": 1360, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(30_000)
    return context, page, errors


@contextmanager
def open_page(browser: sync_api.Browser, base_url: str) -> Iterator[sync_api.Page]:
    """A fresh page for one test; any JavaScript error on it fails the test."""
    context, page, errors = new_page(browser, base_url)
    try:
        yield page
        assert not errors, f"JavaScript errors on the page: {errors}"
    finally:
        context.close()


def enter_key(page: sync_api.Page, key: str) -> None:
    page.goto("/")
    page.fill("#api-key", key)
    page.click("#key-form button[type=submit]")


__all__ = ["CHROMIUM", "browser", "enter_key", "new_page", "open_page", "sync_api"]
