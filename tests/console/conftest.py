"""Fixtures for the web console's browser tests: one live stack (uvicorn with API keys, a
cpflow-worker, Redis db 13 under a queue name of its own) shared by every test of the session,
and a real headless Chromium from the system's packages driven by Playwright.

The browser is Debian's ``chromium`` (``.ci/run`` installs it through scripts/ensure_browser.sh);
Playwright never downloads one. Set CPFLOW_CHROMIUM to use another binary. Without a browser
every test here skips and says why.

Every page fixture records console errors and uncaught JS exceptions and fails the test on any
it did not expect (a test names the HTTP errors it provokes with ``page_log.allow``).
Screenshots go to CPFLOW_CONSOLE_SCREENSHOTS when set (the README's pictures were made so),
else to a temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "images"))

from image_flows import random_image_flow
from jobs_procs import REDIS_URL, purge, stack_env, start_server, start_worker
from svc_procs import make_flow

API_KEY = "console-test-key"
KEY_STORAGE = "cpflow-api-key"  # the sessionStorage entry console.js reads


def chromium_path() -> str | None:
    """CPFLOW_CHROMIUM, or the system's Chromium on PATH (as scripts/ensure_browser.sh finds it)."""
    for name in (
        os.environ.get("CPFLOW_CHROMIUM"),
        "chromium",
        "chromium-browser",
        "google-chrome",
    ):
        found = shutil.which(name) if name else None
        if found:
            return found
    return None


# ------------------------------------------------------------------ the live stack


class ConsoleStack:
    """uvicorn (auth on) + one worker on a store holding a 2-version 'demo' model."""

    def __init__(self, tmp: Path, queue_name: str) -> None:
        self.tmp = tmp
        store_dir = tmp / "store"
        publish_demo(store_dir)
        self.env = {**stack_env(store_dir, queue_name), "CPFLOW_API_KEYS": API_KEY}
        self.worker = start_worker(self.env, tmp / "worker.log")
        self.server, self.url = start_server(self.env, tmp / "server.log")
        self.client = httpx.Client(
            base_url=self.url, timeout=60, headers={"Authorization": f"Bearer {API_KEY}"}
        )

    def close(self) -> None:
        self.client.close()
        self.worker.stop()
        self.server.stop()


def publish_demo(store_dir: Path) -> None:
    """'demo': version 1 without plots, version 2 with a real density plot and metrics;
    'tiles': a small image model (1 x 4 x 4)."""
    from model_store import ModelStore
    from training.plots import density_figure

    store = ModelStore(store_dir)
    store.publish("demo", make_flow(2, seed=4), training={"metrics": {"test_nll": 2.9}})
    flow = make_flow(2, seed=5)
    data = np.random.default_rng(0).normal(size=(400, 2)) + 1.0
    png = density_figure(flow, data, n_samples=200, grid=40)
    metrics = {"test_nll": 2.71, "val_nll": 2.69}
    store.publish("demo", flow, training={"metrics": metrics}, plots={"density.png": png})
    store.publish("tiles", random_image_flow((1, 4, 4), (1, 1), hidden=4, seed=3))


@pytest.fixture(scope="session")
def chromium() -> str:
    path = chromium_path()
    if path is None:
        pytest.skip(
            "NO BROWSER: the console's browser tests need Chromium (Debian: apt-get install "
            "chromium; .ci/run does it via scripts/ensure_browser.sh) or CPFLOW_CHROMIUM"
        )
    return path


@pytest.fixture(scope="session")
def stack(chromium, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    conn = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        conn.ping()
    except redis.exceptions.ConnectionError:
        pytest.fail(f"Redis is not answering at {REDIS_URL}; start it (scripts/ensure_redis.sh)")
    name = f"cpflow-test-{uuid.uuid4().hex[:10]}"
    s = ConsoleStack(tmp_path_factory.mktemp("console"), name)
    try:
        yield s
    finally:
        s.close()
        purge(conn, name)


# ------------------------------------------------------------------ the browser


@pytest.fixture(scope="session")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


class PageLog:
    """Console errors and JS exceptions of one page; some HTTP errors may be allowed."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.allowed: list[re.Pattern[str]] = []
        self.urls: list[str] = []

    def allow(self, status: int) -> None:
        """A failed fetch with this status is expected (Chromium logs it as a console error)."""
        self.allowed.append(re.compile(rf"status of {status}\b"))

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]


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
