"""Property-based fuzz of the OpenAPI schema (schemathesis strategies, driven by hypothesis)
against a real uvicorn process, /v1 and /v2 (Open Inference Protocol): no generated request,
valid or not, may produce a 5xx, and every 4xx carries the error envelope (``{"error": "..."}``
under /v2). The schema states the constraints the service enforces: schemathesis's "schema
validation mismatch" rule (every positive case rejected, mostly by 400/422) holds for no
operation whose validity the schema can express (see MODEL_DEPENDENT for those it cannot).

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

from tests.helpers.service import API_KEY

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
        if op.method.upper() == "DELETE":
            # Deleting models would empty the store the other service tests share (the fuzz
            # deleted 'moons' and the examples test then got 404); tests/chaos/
            # test_model_tenancy.py covers the delete routes on a store of their own.
            continue
        if op.path.startswith(("/v1/models", "/v2")) or op.path in ("/healthz", "/readyz"):
            ops.append(op)
    assert len(ops) >= 21  # every model/inference route, latest and pinned, v2, health
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
            assert_error_shape(op.path, response.json())

    try:
        check()
    except Unsatisfiable:
        # Nothing to make invalid (e.g. GET /healthz has no parameters).
        assert mode is GenerationMode.NEGATIVE


def assert_error_shape(path: str, body: dict) -> None:
    """The envelope on /v1 and operations; the protocol's {"error": "..."} on /v2."""
    assert set(body) == {"error"}, body
    if path.startswith("/v2"):
        assert isinstance(body["error"], str) and body["error"], body
    else:
        assert body["error"]["code"] and body["error"]["message"], body


# Bodies valid only for a given model: rows must have the model's dimension and a tensor's data
# the product of its shape, which no JSON Schema of a model-independent route can state.
MODEL_DEPENDENT = {
    "/v1/models/{name}/log_prob",
    "/v1/models/{name}/versions/{version}/log_prob",
    "/v1/models/{name}/transport",
    "/v1/models/{name}/versions/{version}/transport",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
}


def validation_mismatch(statuses: list[int]) -> bool:
    """schemathesis's rule for warning that an operation's schema constraints do not match its
    validation: every positive case got a 4xx, and at least 10% of those were not 401, 403,
    404, 409 or 429 (which say nothing about the data sent)."""
    if not statuses or not all(400 <= s < 500 for s in statuses) or set(statuses) <= {401, 403}:
        return False
    counted = [s for s in statuses if s not in (401, 403, 409, 429)]
    other = [s for s in counted if s != 404]
    return bool(counted) and len(other) / len(counted) >= 0.1


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


def _positive_statuses(op, base_url: str, path_parameters: dict) -> list[int]:
    """Statuses of 10 positive cases (derandomized: the same cases every run)."""
    statuses: list[int] = []

    @given(
        case=op.as_strategy(
            generation_mode=GenerationMode.POSITIVE, path_parameters=path_parameters
        )
    )
    @settings(max_examples=10, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def check(case):
        response = case.call(base_url=base_url, timeout=60, headers=AUTH)
        assert response.status_code < 500, (case.as_curl_command(), response.text)
        statuses.append(response.status_code)

    check()
    return statuses


def test_schema_constraints_match_validation(operations, limited_server):
    """Positive cases on a real model ('moons' version 1) pass schemathesis's mismatch rule on
    every operation whose validity the schema can state; the document states this server's
    limits (CPFLOW_MAX_SAMPLES=16, CPFLOW_MAX_INVERSE_ITERATIONS=5, CPFLOW_MAX_BATCH=64)."""
    import httpx

    schemas = httpx.get(limited_server + "/openapi.json").json()["components"]["schemas"]
    sample = schemas["SampleRequest"]["properties"]
    assert sample["num_samples"]["maximum"] == 16
    assert sample["max_iterations"]["anyOf"][0]["maximum"] == 5
    assert schemas["LogProbRequest"]["properties"]["inputs"]["maxItems"] == 64
    mismatched = []
    for op in operations:
        real = {
            k: v for k, v in {"name": "moons", "version": 1}.items() if "{" + k + "}" in op.path
        }
        statuses = _positive_statuses(op, limited_server, real)
        if op.path not in MODEL_DEPENDENT and validation_mismatch(statuses):
            mismatched.append((op.method, op.path, statuses))
    assert not mismatched


def test_openapi_request_examples_succeed(limited_server):
    """Every request example /docs shows (/v1 and /v2) works as-is against a real model
    (named 'moons')."""
    import httpx

    spec = httpx.get(limited_server + "/openapi.json").json()
    schemas = spec["components"]["schemas"]
    tried = 0
    with httpx.Client(base_url=limited_server, timeout=60, headers=AUTH) as c:
        for path, ops in spec["paths"].items():
            if not path.startswith(("/v1/models", "/v2/models")):
                continue
            for method, op in ops.items():
                content = op.get("requestBody", {}).get("content", {}).get("application/json")
                if not content:
                    continue
                schema = content["schema"]  # /v2 infer: inline (it also takes binary bodies)
                if "$ref" in schema:
                    schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
                url = path.replace("{name}", "moons").replace("{version}", "1")
                for example in schema["examples"]:
                    r = c.request(method.upper(), url, json=example)
                    assert r.status_code == 200, (url, example, r.text)
                    tried += 1
    assert tried >= 14  # /v1 and /v2 (two infer examples, latest and pinned)
