"""Operations against a real uvicorn process: health, readiness, metrics, request ids, models
catalogue, auth, hot publishing, and a responsive event loop during long inference."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np

from model_store import ModelStore
from tests.helpers.flows import make_flow
from tests.helpers.service import API_KEY


def test_healthz_and_readyz_report_store_and_redis(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready" and body["store"]["ok"] is True
    assert body["store"]["models"] >= 3
    # The test server points at a port where no Redis listens: reported, not fatal.
    assert body["redis"]["ok"] is False and body["redis"]["error"]
    assert body["device"] == "cpu"


def test_request_id_is_echoed_or_generated(client):
    r = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32
    # Unsafe ids are replaced, not echoed (log injection).
    assert (
        client.get("/healthz", headers={"X-Request-ID": "a b\tc"}).headers["x-request-id"]
        != "a b\tc"
    )
    err = client.post(
        "/v1/models/nope/log_prob", json={"inputs": [[1]]}, headers={"X-Request-ID": "e-1"}
    )
    assert err.status_code == 404 and err.headers["x-request-id"] == "e-1"


def test_metrics_expose_requests_latency_rows_and_inversions(client):
    client.post("/v1/models/toy2d/log_prob", json={"inputs": [[1, 2], [3, 4]], "method": "exact"})
    client.post("/v1/models/toy2d/sample", json={"num_samples": 3, "seed": 1})
    text = client.get("/metrics").text
    assert (
        'cpflow_http_requests_total{method="POST",route="/v1/models/{name}/log_prob",status="200"}'
        in text
    )
    assert (
        'cpflow_http_request_duration_seconds_bucket{le="0.001",model="toy2d",route="/v1/models/{name}/log_prob"}'
        in text
    )
    assert 'cpflow_rows_scored_total{model="toy2d",operation="log_prob"}' in text
    assert 'cpflow_inversion_iterations_count{model="toy2d"}' in text
    assert 'cpflow_inversion_max_residual_count{model="toy2d"}' in text
    loaded = [ln for ln in text.splitlines() if ln.startswith("cpflow_loaded_models ")]
    assert loaded and float(loaded[0].split()[1]) >= 1


def test_model_catalogue_and_plots(client):
    listing = client.get("/v1/models").json()
    names = {m["name"]: m for m in listing["models"]}
    assert {"toy2d", "toy4d"} <= set(names) and listing["count"] == len(listing["models"])
    assert names["toy2d"]["dim"] == 2 and names["toy2d"]["metrics"] == {"test_nll": 2.5}
    detail = client.get("/v1/models/toy2d").json()
    assert detail["versions"][0] == 1 and detail["dim"] == 2
    assert detail["flow_config"]["dim"] == 2
    url = detail["plots"]["density.png"]
    assert url == "/v1/models/toy2d/versions/1/plots/density.png"
    png = client.get(url)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")
    assert client.get("/v1/models/toy2d/plots/density.png").content == png.content
    assert client.get("/v1/models/toy2d/versions/1").json()["version"] == 1


def test_openapi_has_examples_for_every_route(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for path, ops in spec["paths"].items():
        if not path.startswith("/v1/models") and path not in ("/healthz", "/readyz"):
            continue
        for method, op in ops.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            ref = body.get("schema", {}).get("$ref")
            if ref:
                assert schemas[ref.rsplit("/", 1)[1]].get("examples"), (method, path)
            ok = op["responses"]["200"]["content"]
            if "application/json" in ok:
                rref = ok["application/json"]["schema"].get("$ref")
                assert rref and schemas[rref.rsplit("/", 1)[1]].get("examples"), (method, path)


def test_model_published_while_running_is_served(client, store_dir):
    store = ModelStore(store_dir)
    assert client.get("/v1/models/fresh").status_code == 404
    store.publish("fresh", make_flow(3, seed=7))
    deadline = time.monotonic() + 10
    while (
        r := client.post("/v1/models/fresh/log_prob", json={"inputs": [[0, 0, 0]]})
    ).status_code != 200:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.1)
    assert r.json()["version"] == 1
    # A second version becomes "latest" without a restart; version 1 stays reachable.
    store.publish("fresh", make_flow(3, seed=8))
    deadline = time.monotonic() + 10
    while (
        client.post("/v1/models/fresh/log_prob", json={"inputs": [[0, 0, 0]]}).json()["version"]
        != 2
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert (
        client.post("/v1/models/fresh/versions/1/log_prob", json={"inputs": [[0, 0, 0]]}).json()[
            "version"
        ]
        == 1
    )


def test_healthz_answers_while_a_long_sample_runs(server):
    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=server, timeout=120) as c:
            # tolerance 1e-12 is out of float32 reach: every row iterates until the solver's
            # no-progress rule stops it (3,000 rows of a 32-D model: ~3 s on one core).
            payload = {"num_samples": 3000, "seed": 0, "tolerance": 1e-12}
            long = asyncio.create_task(c.post("/v1/models/toy32d/sample", json=payload))
            await asyncio.sleep(0.2)
            assert not long.done()
            health = [await c.get("/healthz") for _ in range(5)]
            ready = await c.get("/readyz")
            other = await c.post("/v1/models/toy2d/log_prob", json={"inputs": [[1, 1]]})
            assert all(h.status_code == 200 for h in health) and ready.status_code == 200
            assert other.status_code == 200  # another inference thread still serves
            assert not long.done(), "the sample finished before the health checks: make it longer"
            r = await long
            assert r.status_code == 200 and r.json()["converged"] is False

    asyncio.run(scenario())


def test_64_concurrent_mixed_requests_match_sequential_answers(server):
    requests = []
    for i in range(64):
        kind = i % 4
        if kind == 0:
            requests.append(
                (
                    "/v1/models/toy2d/log_prob",
                    {"inputs": [[i * 0.1, 1.0 - i * 0.05]], "method": "exact"},
                )
            )
        elif kind == 1:
            requests.append(
                ("/v1/models/toy4d/log_prob", {"inputs": [[i * 0.1, 0.2, 0.3, 1.0]] * 3})
            )
        elif kind == 2:
            requests.append(("/v1/models/toy2d/transport", {"inputs": [[i * 0.2, -1.0]]}))
        else:
            requests.append(("/v1/models/toy2d/sample", {"num_samples": 4, "seed": i}))

    def key(path, body):
        return {k: v for k, v in body.items() if k not in ("max_residual",)}

    with httpx.Client(base_url=server, timeout=60) as c:
        sequential = [c.post(p, json=b) for p, b in requests]
    assert all(r.status_code == 200 for r in sequential)

    async def fire() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server, timeout=120, limits=limits) as c:
            return await asyncio.gather(*(c.post(p, json=b) for p, b in requests))

    concurrent = asyncio.run(fire())
    for (path, _), seq, con in zip(requests, sequential, concurrent, strict=True):
        assert con.status_code == 200, con.text
        a, b = key(path, seq.json()), key(path, con.json())
        for field in ("log_prob", "outputs", "samples"):
            if field in a:
                # Batched vs single evaluation: float32 round-off only.
                np.testing.assert_allclose(b[field], a[field], rtol=1e-4, atol=1e-4, err_msg=path)
                a.pop(field), b.pop(field)
        assert a == b


def test_auth_required_on_v1_when_keys_are_set(limited_server):
    with httpx.Client(base_url=limited_server, timeout=30) as c:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert c.get(path).status_code in (200, 503), path
        r = c.get("/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert "Bearer" in r.headers["www-authenticate"]
        bad = c.post("/v1/models/toy2d/log_prob", json={"inputs": [[1, 2]]},
                     headers={"Authorization": "Bearer wrong"})  # fmt: skip
        assert bad.status_code == 401 and "invalid API key" in bad.json()["error"]["message"]
        # 401 comes before any body parsing: a malformed body without a key is still 401.
        raw = c.post(
            "/v1/models/toy2d/log_prob", content=b"{", headers={"content-type": "application/json"}
        )
        assert raw.status_code == 401
        for key in (API_KEY, "other-key"):
            ok = c.post("/v1/models/toy2d/log_prob", json={"inputs": [[1, 2]]},
                        headers={"Authorization": f"Bearer {key}"})  # fmt: skip
            assert ok.status_code == 200, ok.text
        assert (
            c.get("/v1/models", headers={"Authorization": f"Basic {API_KEY}"}).status_code == 401
        )


def test_no_auth_when_keys_unset(client):
    assert client.get("/v1/models").status_code == 200
