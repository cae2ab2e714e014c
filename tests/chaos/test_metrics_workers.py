"""With ``cpflow-serve --workers 2`` every /metrics scrape reports the totals of both worker
processes (before: each scrape showed the one process that answered it)."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.chaos.serve import start_serve

pytestmark = pytest.mark.integration

REQUESTS = 60


def _healthz_total(text: str) -> float:
    pattern = r'^cpflow_http_requests_total\{[^}]*route="/healthz"[^}]*\} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


def _served_by(url: str) -> str:
    # A new connection per request, so both processes take some.
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/healthz").status_code == 200
        return "ok"


def test_every_scrape_reports_the_totals_of_all_workers(tmp_path: Path) -> None:
    env = {"CPFLOW_STORE_DIR": str(tmp_path / "store"), "CPFLOW_DEVICE": "cpu"}
    proc, url = start_serve(env, tmp_path / "serve.log", "--workers", "2")
    try:
        # start_serve's readiness probes were requests too: count from what /metrics says now.
        base = _healthz_total(httpx.get(url + "/metrics", timeout=10).text)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(_served_by, [url] * REQUESTS))
        totals = [_healthz_total(httpx.get(url + "/metrics", timeout=10).text) for _ in range(10)]
        assert totals == [base + REQUESTS] * 10, proc.tail()
    finally:
        proc.stop()
