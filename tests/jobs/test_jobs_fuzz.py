"""Property-based fuzz of the job and data-set routes (schemathesis strategies from the
OpenAPI schema, driven by hypothesis) in process, on the real Redis: no request, valid or not,
may produce a 5xx, and every 4xx carries the error envelope. The job quota holds against the
fuzzer: it cannot queue more than CPFLOW_MAX_ACTIVE_JOBS_PER_KEY jobs (others get 429)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from service.app import create_app
from service.settings import Settings

QUOTA = 2


@pytest.fixture
def app(tmp_path: Path, queue_name: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    monkeypatch.setenv("CPFLOW_QUEUE_NAME", queue_name)
    settings = Settings(
        store_dir=tmp_path / "store",
        redis_url="redis://127.0.0.1:6379/13",
        max_upload_bytes=64 * 1024,
        max_active_jobs_per_key=QUOTA,
        inference_threads=1,
        torch_threads=1,
    )
    application = create_app(settings)
    with TestClient(application):  # runs the lifespan
        yield application


def test_job_and_dataset_routes_never_answer_5xx(app) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    seen: list[tuple[str, str, int]] = []
    for result in schema.get_all_operations():
        op = result.ok()
        if not (op.path.startswith("/v1/jobs") or op.path.startswith("/v1/datasets")):
            continue
        if op.path.endswith("/events"):
            continue  # a stream: covered by test_api
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=6, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            def check(case) -> None:
                response = case.call()
                seen.append((case.method, case.operation.path, response.status_code))
                if response.status_code == 429:
                    (retry,) = response.headers["retry-after"]  # schemathesis: header -> values
                    assert int(retry) >= 1
                assert response.status_code < 500, (case.as_curl_command(), response.text)
                if response.status_code >= 400:
                    body = response.json()
                    assert set(body) == {"error"}, body
                    assert body["error"]["code"] and body["error"]["message"]

            try:
                check()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE
    assert {p for _, p, _ in seen} >= {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/datasets"}
    accepted = {(m, p) for m, p, status in seen if status < 300}
    assert ("POST", "/v1/jobs") in accepted and ("GET", "/v1/jobs") in accepted, sorted(seen)
    queued = [s for m, p, s in seen if (m, p) == ("POST", "/v1/jobs") and s == 202]
    assert len(queued) <= QUOTA, sorted(seen)  # nobody cancels them: the quota stays full
