"""Helpers of the web console's browser tests (imported by name, so that they never depend on
which conftest module pytest loaded last): the live stack, the browser's path, page checks.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import httpx
import numpy as np

from tests.helpers.flows import conditional_flow, make_flow
from tests.helpers.image_flows import random_image_flow
from tests.helpers.procs import stack_env, start_server, start_worker

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
        self.queue_name = queue_name
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
    """'demo': version 1 without plots, version 2 with a real density plot, metrics and held-out
    scores (calibration);
    'tiles': a small image model (1 x 4 x 4); 'cond': a conditional model (dim 2, context 1)."""
    import torch

    from model_store import ModelStore
    from model_store.calibration import reference_summary
    from training.plots import density_figure

    store = ModelStore(store_dir)
    store.publish("demo", make_flow(2, seed=4), training={"metrics": {"test_nll": 2.9}})
    flow = make_flow(2, seed=5)
    data = np.random.default_rng(0).normal(size=(400, 2)) + 1.0
    png = density_figure(flow, data, n_samples=200, grid=40)
    metrics = {"test_nll": 2.71, "val_nll": 2.69}
    with torch.no_grad():  # held-out scores, as training publishes them (calibrated scores)
        held = flow.log_prob(torch.as_tensor(data, dtype=torch.float32), method="exact")
    training = {"metrics": metrics, "calibration": reference_summary(held.numpy(), split="test",
                                                                     method="exact")}  # fmt: skip
    store.publish("demo", flow, training=training, plots={"density.png": png})
    store.publish("tiles", random_image_flow((1, 4, 4), (1, 1), hidden=4, seed=3))
    store.publish("cond", conditional_flow())


_UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea')]
    .filter((el) => el.labels === null || el.labels.length === 0).map((el) => el.id)"""


def assert_labelled(page) -> None:
    """Every form field of the page has a label (screen readers name fields by it)."""
    assert page.evaluate(_UNLABELLED) == [], "form fields without a label"


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


def wait_until(page, predicate: str, arg: object = None, timeout: float = 60.0) -> None:
    """Poll a JS predicate with page.evaluate until it is truthy. Not Playwright's
    wait_for_function: that one evals a string inside the page, which the console's
    Content-Security-Policy rightly refuses (and reports as a console error)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(predicate, arg):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
        page.wait_for_timeout(100)
