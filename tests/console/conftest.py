"""Fixtures for the web console's browser tests: one live stack (uvicorn with API keys, a
cpflow-worker, Redis db 13 under a queue name of its own) shared by every test of the session,
and a real headless Chromium from the system's packages driven by Playwright.

The browser is Debian's ``chromium`` (scripts/test.sh and .ci/run install it through
scripts/ensure_browser.sh); Playwright never downloads one. Set CPFLOW_CHROMIUM to use another
binary. Without a browser every test here skips and says why.

Every page fixture records console errors and uncaught JS exceptions and fails the test on any
it did not expect (a test names the HTTP errors it provokes with ``page_log.allow``).
Screenshots go to CPFLOW_CONSOLE_SCREENSHOTS when set (the README's pictures were made so),
else to a temporary folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.console.console_stack import API_KEY, KEY_STORAGE, ConsoleStack, PageLog, chromium_path
from tests.helpers.procs import (
    connect_test_redis,
    new_queue_name,
    purge,
)


@pytest.fixture(scope="session")
def chromium() -> str:
    path = chromium_path()
    if path is None:
        pytest.skip(
            "NO BROWSER: the console's browser tests need Chromium (Debian: apt-get install "
            "chromium; scripts/test.sh does it via scripts/ensure_browser.sh) or CPFLOW_CHROMIUM"
        )
    return path


@pytest.fixture(scope="session")
def stack(chromium, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    conn = connect_test_redis()
    name = new_queue_name()
    s = ConsoleStack(tmp_path_factory.mktemp("console"), name)
    try:
        yield s
    finally:
        s.close()
        purge(conn, name)


# ------------------------------------------------------------------ the browser


# Module scope, not session: Playwright's sync API keeps an event loop running on this thread
# while it is started, and later tests of the session call asyncio.run().
@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page_log() -> PageLog:
    return PageLog()


def _page_fixture(browser, log: PageLog, *, key: str | None, width: int = 1200):
    """A page of a fresh tab; at teardown, fail on unexpected console errors or a leaked key."""
    context = browser.new_context(viewport={"width": width, "height": 900}, accept_downloads=True)
    if key is not None:
        # As if the key had been entered once in this tab; console.js reads it from here.
        context.add_init_script(
            f"try {{ if (!sessionStorage.getItem('{KEY_STORAGE}'))"
            f" sessionStorage.setItem('{KEY_STORAGE}', '{key}'); }} catch (e) {{}}"
        )
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.on("console", lambda m: m.type == "error" and log.errors.append(m.text))
    page.on("pageerror", lambda exc: log.errors.append(f"uncaught: {exc}"))
    page.on("request", lambda r: log.urls.append(r.url))
    yield page
    context.close()
    problems = log.unexpected()
    assert not problems, f"browser console errors / JS exceptions: {problems}"
    leaked = [u for u in log.urls if API_KEY in u]
    assert not leaked, f"the API key appeared in a URL: {leaked}"


@pytest.fixture
def page(browser, stack, page_log):
    """A page of a tab where the right API key was entered."""
    yield from _page_fixture(browser, page_log, key=API_KEY)


@pytest.fixture
def bare_page(browser, stack, page_log):
    """A page of a fresh tab: no key entered yet."""
    yield from _page_fixture(browser, page_log, key=None)


@pytest.fixture
def narrow_page(browser, stack, page_log):
    """A 400-px-wide page with the key entered (a phone held upright)."""
    yield from _page_fixture(browser, page_log, key=API_KEY, width=400)


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> Path:
    """Where screenshots go: CPFLOW_CONSOLE_SCREENSHOTS, else a temporary folder."""
    where = os.environ.get("CPFLOW_CONSOLE_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("shots")
    path.mkdir(parents=True, exist_ok=True)
    return path
