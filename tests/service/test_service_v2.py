"""The Open Inference Protocol (KServe v2) routes through the real ``tritonclient[http]`` client
against a real uvicorn server with API keys: health, readiness and metadata, and inference
(log_prob exact and slq, seeded sample, forward and inverse transport) on a dense, an image and a
conditional model, each answer equal to the /v1 answer for the same request (same handlers,
same engine: equality is exact), in binary and JSON tensors; errors take the protocol's shape.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from model_store import ModelStore
from tests.helpers.flows import conditional_flow, make_flow
from tests.helpers.image_flows import random_image_flow
from tests.helpers.service import run_server

KEY = "v2-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# model name -> (input shape per row, numpy dtype, context dim)
MODELS = {
    "dense": ((2,), np.float32, None),
    "digits": ((1, 4, 4), np.float64, None),
    "cond": ((2,), np.float32, 1),
}


@pytest.fixture(scope="module")
def v2_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2svc") / "store"
    store = ModelStore(root)
    store.publish("dense", make_flow(2, seed=4))
    store.publish("dense", make_flow(2, seed=5))  # version 2: latest
    store.publish("digits", random_image_flow((1, 4, 4), (1, 1), hidden=4, depth=2, seed=5))
    store.publish("cond", conditional_flow())
    env = {
        "CPFLOW_STORE_DIR": str(root),
        "CPFLOW_API_KEYS": KEY,
        "CPFLOW_REDIS_URL": "redis://127.0.0.1:1/0",
        "CPFLOW_MAX_INVERSE_ITERATIONS": "200",
    }
    with run_server(env, log_path=tmp_path_factory.mktemp("logs") / "v2.log") as url:
        yield url


@pytest.fixture(scope="module")
def triton_client(v2_server):
    client = triton.InferenceServerClient(url=v2_server.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def v1(v2_server):
    with httpx.Client(base_url=v2_server, timeout=60, headers=AUTH) as c:
        yield c


def _data(name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    shape, dtype, context_dim = MODELS[name]
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, *shape)) * 0.5 + 0.5).astype(dtype)
    c = None if context_dim is None else rng.uniform(-1, 1, size=(n, context_dim)).astype(dtype)
    return x, c


def _tensor(name: str, array: np.ndarray, binary: bool) -> triton.InferInput:
    datatype = "FP64" if array.dtype == np.float64 else "FP32"
    t = triton.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array, binary_data=binary)
    return t


def _infer(client, model, parameters, x=None, c=None, *, binary=True, version="", outputs=None):
    inputs = [] if x is None else [_tensor("input", x, binary)]
    if c is not None:
        inputs.append(_tensor("context", c, binary))
    requested = None
    if outputs is not None:
        requested = [triton.InferRequestedOutput(o, binary_data=binary) for o in outputs]
    # a copy: tritonclient adds its Inference-Header-Content-Length to the dict it is given
    return client.infer(model, inputs, model_version=version, outputs=requested,
                        parameters=parameters, headers=dict(AUTH))  # fmt: skip


def _v1(client, path, body, c=None):
    if c is not None:
        body["context"] = c.tolist()
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_health_readiness_and_metadata(triton_client):
    assert triton_client.is_server_live() and triton_client.is_server_ready()  # open probes
    assert triton_client.get_server_metadata(headers=AUTH)["name"] == "cpflow"
    for name, (shape, dtype, context_dim) in MODELS.items():
        assert triton_client.is_model_ready(name, headers=AUTH)
        meta = triton_client.get_model_metadata(name, headers=AUTH)
        datatype = "FP64" if dtype == np.float64 else "FP32"
        inputs = {t["name"]: t for t in meta["inputs"]}
        assert inputs["input"] == {"name": "input", "datatype": datatype, "shape": [-1, *shape]}
        if context_dim is None:
            assert set(inputs) == {"input"}
        else:
            assert inputs["context"]["shape"] == [-1, context_dim]
        outputs = {t["name"]: t for t in meta["outputs"]}
        assert outputs["samples"]["shape"] == [-1, *shape]
        assert outputs["converged"]["datatype"] == "BOOL"
    meta = triton_client.get_model_metadata("dense", "1", headers=AUTH)
    assert meta["versions"] == ["1", "2"] and meta["platform"] == "cpflow"
    assert triton_client.is_model_ready("dense", "1", headers=AUTH)
    assert not triton_client.is_model_ready("dense", "9", headers=AUTH)
    assert not triton_client.is_model_ready("nope", headers=AUTH)


@pytest.mark.parametrize("name", list(MODELS))
def test_log_prob_exact_and_slq_equal_v1(triton_client, v1, name):
    x, c = _data(name, 5, seed=1)
    for binary in (True, False):
        got = _infer(triton_client, name, {"method": "exact"}, x, c, binary=binary)
        want = _v1(v1, f"/v1/models/{name}/log_prob", {"inputs": x.tolist(), "method": "exact"}, c)
        lp = got.as_numpy("log_prob")
        assert lp.dtype == x.dtype and lp.shape == (5,)
        np.testing.assert_array_equal(lp, np.array(want["log_prob"], dtype=x.dtype))
        assert got.as_numpy("stderr") is None
        assert got.get_response()["parameters"]["method"] == "exact"
    params = {"operation": "log_prob", "method": "slq", "probes": 4, "steps": 6, "seed": 3}
    got = _infer(triton_client, name, params, x, c)
    body = {"inputs": x.tolist(), "method": "slq", "slq": {"probes": 4, "steps": 6}, "seed": 3}
    want = _v1(v1, f"/v1/models/{name}/log_prob", body, c)
    np.testing.assert_array_equal(got.as_numpy("log_prob"), np.array(want["log_prob"], x.dtype))
    np.testing.assert_array_equal(got.as_numpy("stderr"), np.array(want["stderr"], x.dtype))
    assert got.get_response()["parameters"] == {"method": "slq", "seed": 3}


@pytest.mark.parametrize("name", list(MODELS))
def test_sample_equal_v1(triton_client, v1, name):
    _, c = _data(name, 1, seed=2)
    params = {"operation": "sample", "num_samples": 3, "seed": 7, "max_iterations": 200}
    got = _infer(triton_client, name, params, None, c, binary=False)
    body = {"num_samples": 3, "seed": 7, "max_iterations": 200}
    want = _v1(v1, f"/v1/models/{name}/sample", body, c)
    shape, dtype, _ = MODELS[name]
    samples = got.as_numpy("samples")
    assert samples.shape == (3, *shape)
    np.testing.assert_array_equal(samples, np.array(want["samples"], dtype=dtype))
    assert bool(got.as_numpy("converged")[0]) == want["converged"]
    np.testing.assert_array_equal(got.as_numpy("max_residual"), [want["max_residual"]])
    assert got.get_response()["parameters"]["seed"] == 7


@pytest.mark.parametrize("name", list(MODELS))
def test_transport_forward_and_inverse_equal_v1(triton_client, v1, name):
    x, c = _data(name, 4, seed=3)
    fwd = _infer(triton_client, name, {"operation": "transport"}, x, c)
    want = _v1(v1, f"/v1/models/{name}/transport", {"inputs": x.tolist()}, c)
    z = fwd.as_numpy("output")
    assert z.shape == x.shape and fwd.as_numpy("max_residual") is None
    np.testing.assert_array_equal(z, np.array(want["outputs"], dtype=x.dtype))
    params = {"operation": "transport", "direction": "inverse", "max_iterations": 200}
    inv = _infer(triton_client, name, params, z, c, outputs=["output", "converged"])
    body = {"inputs": z.tolist(), "direction": "inverse", "max_iterations": 200}
    want = _v1(v1, f"/v1/models/{name}/transport", body, c)
    np.testing.assert_array_equal(inv.as_numpy("output"), np.array(want["outputs"], x.dtype))
    assert bool(inv.as_numpy("converged")[0]) == want["converged"] is True
    assert inv.as_numpy("max_residual") is None  # not asked for
    np.testing.assert_allclose(inv.as_numpy("output"), x, atol=1e-3)  # it inverts: x back


def test_pinned_version_and_latest_differ(triton_client, v1):
    x, _ = _data("dense", 3, seed=4)
    latest = _infer(triton_client, "dense", {}, x)
    first = _infer(triton_client, "dense", {}, x, version="1")
    assert latest.get_response()["model_version"] == "2"
    assert first.get_response()["model_version"] == "1"
    want = _v1(v1, "/v1/models/dense/versions/1/log_prob", {"inputs": x.tolist()})
    np.testing.assert_array_equal(first.as_numpy("log_prob"), np.array(want["log_prob"], "f4"))
    assert not np.array_equal(first.as_numpy("log_prob"), latest.as_numpy("log_prob"))


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


def test_errors_take_the_protocol_shape(v2_server, triton_client):
    tensor = {"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0.1, 0.2]}
    with httpx.Client(base_url=v2_server, timeout=60) as c:
        assert "Authorization" in _error(c.get("/v2/models/dense"), 401)
        c.headers.update(AUTH)
        assert "nope" in _error(c.post("/v2/models/nope/infer", json={"inputs": [tensor]}), 404)
        bad = {**tensor, "shape": [1, 3]}
        assert "holds 3 values" in _error(
            c.post("/v2/models/dense/infer", json={"inputs": [bad]}), 400
        )
        wrong = {**tensor, "shape": [1, 1, 2], "data": [0.1, 0.2]}
        msg = _error(c.post("/v2/models/dense/infer", json={"inputs": [wrong]}), 400)
        assert "2-D or 4-D" in msg
        wide = {**tensor, "shape": [1, 3], "data": [0.1, 0.2, 0.3]}
        assert "expects" in _error(c.post("/v2/models/dense/infer", json={"inputs": [wide]}), 422)
        body = {"inputs": [tensor], "parameters": {"operation": "explode"}}
        assert "operation" in _error(c.post("/v2/models/dense/infer", json=body), 422)
        body = {"inputs": [{**tensor, "name": "x"}]}
        assert "not one of input, context" in _error(
            c.post("/v2/models/dense/infer", json=body), 422
        )
        body = {"inputs": [tensor]}
        assert "context" in _error(c.post("/v2/models/cond/infer", json=body), 422)
        _error(c.post("/v2/models/dense/infer", content=b"{not json"), 400)
        _error(c.get("/v2/models/dense/versions/0"), 422)
        _error(c.get("/v2/nothing-here"), 404)
    with pytest.raises(InferenceServerException) as info:
        _infer(triton_client, "dense", {"operation": "sample"})
    assert "num_samples" in info.value.message() and info.value.status() == "400"


def test_overflowing_output_is_null_in_json_and_nan_in_binary(v2_server, triton_client):
    x = np.array([[1e30, 0.0], [1.0, 1.0]], dtype=np.float32)  # finite, but log p overflows
    lp = _infer(triton_client, "dense", {"method": "exact"}, x).as_numpy("log_prob")
    assert np.isnan(lp[0]) and np.isfinite(lp[1])
    tensor = {"name": "input", "shape": [2, 2], "datatype": "FP32", "data": x.ravel().tolist()}
    r = httpx.post(v2_server + "/v2/models/dense/infer", json={"inputs": [tensor]}, headers=AUTH)
    (out,) = r.json()["outputs"]
    assert out["data"][0] is None and out["data"][1] == float(lp[1])
