"""Property-based fuzz of the OpenAPI schema (schemathesis strategies, driven by hypothesis)
against a real uvicorn process: no generated request, valid or not, may produce a 5xx, and every
4xx carries the error envelope.

Bounded: a few examples per operation and generation mode (about 100 requests in all), against
a server whose limits keep each request cheap. The schemathesis pytest plugin is not used: its
parametrisation does not run under this pytest version, so the strategies are driven directly.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from svc_procs import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}
EXAMPLES_PER_MODE = int(os.environ.get("CPFLOW_FUZZ_EXAMPLES", "4"))


@pytest.fixture(scope="module")
def operations(limited_server):
    schema = schemathesis.openapi.from_url(
        limited_server + "/openapi.json"
    )  # /openapi.json is open
    ops = []
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path.startswith("/v1/models") or op.path in ("/healthz", "/readyz"):
            ops.append(op)
    assert len(ops) >= 12  # every model/inference route, latest and pinned, plus health
    return ops


def _fuzz(op, mode, base_url: str, seen: list, path_parameters: dict | None = None) -> None:
    @given(case=op.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    @settings(max_examples=EXAMPLES_PER_MODE, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def check(case):
        response = case.call(base_url=base_url, timeout=60, headers=AUTH)
        seen.append((op.path, response.status_code))
        assert response.status_code < 500, (case.as_curl_command(), response.text)
        if response.status_code >= 400:
            body = response.json()
            assert set(body) == {"error"}, body
            assert body["error"]["code"] and body["error"]["message"]

    try:
        check()
    except Unsatisfiable:
        # Nothing to make invalid (e.g. GET /healthz has no parameters).
        assert mode is GenerationMode.NEGATIVE


def test_openapi_fuzz_finds_no_server_error(operations, limited_server):
    seen: list[tuple[str, int]] = []
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(op, mode, limited_server, seen)
        # Random names rarely exist: also fuzz the bodies of a real 2-D model.
        real = {
            k: v for k, v in {"name": "moons", "version": 1}.items() if "{" + k + "}" in op.path
        }
        if real:
            _fuzz(op, GenerationMode.POSITIVE, limited_server, seen, real)
    assert len(seen) >= 50
    assert sum(status == 200 for _, status in seen) >= 10  # not only rejections


def test_openapi_request_examples_succeed(limited_server):
    """Every request example /docs shows works as-is against a real model (named 'moons')."""
    import httpx

    spec = httpx.get(limited_server + "/openapi.json").json()
    schemas = spec["components"]["schemas"]
    tried = 0
    with httpx.Client(base_url=limited_server, timeout=60, headers=AUTH) as c:
        for path, ops in spec["paths"].items():
            if not path.startswith("/v1/models"):
                continue
            for method, op in ops.items():
                content = op.get("requestBody", {}).get("content", {}).get("application/json")
                if not content:
                    continue
                schema = schemas[content["schema"]["$ref"].rsplit("/", 1)[1]]
                url = path.replace("{name}", "moons").replace("{version}", "1")
                for example in schema["examples"]:
                    r = c.request(method.upper(), url, json=example)
                    assert r.status_code == 200, (url, example, r.text)
                    tried += 1
    assert tried >= 10
