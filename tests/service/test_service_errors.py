"""Every user mistake gets a 4xx with the error envelope and a message that says what to fix."""

from __future__ import annotations

import json

import pytest

LP = "/v1/models/toy2d/log_prob"


def assert_envelope(r, status: int, code: str | None = None, *needles: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err["code"], str) and isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    for needle in needles:
        assert needle in err["message"], err
    return err


@pytest.mark.parametrize(
    ("payload", "status", "code", "needles"),
    [
        (
            {"inputs": [[1.0, 2.0, 3.0]]},
            422,
            "wrong_dimension",
            ("row 0", "3 values", "expects 2"),
        ),
        ({"inputs": [[1.0, 2.0], [1.0]]}, 422, "wrong_dimension", ("row 1", "1 values")),
        ({"inputs": [[1e308, 0.0]]}, 422, "value_out_of_range", ("inputs[0][0]", "float32")),
        ({"inputs": [["1.0", 2.0]]}, 422, "validation_error", ("inputs row 0, value 0", "'1.0'")),
        ({"inputs": [[True, 2.0]]}, 422, "validation_error", ("inputs row 0, value 0",)),
        ({"inputs": [[[1.0, 2.0]]]}, 422, "validation_error", ("inputs row 0, value 0",)),
        (
            {"inputs": [1.0, 2.0]},
            422,
            "validation_error",
            ("send a list of rows, e.g. [[0.5, 0.1]]",),
        ),
        ({"inputs": []}, 422, "validation_error", ("inputs is empty",)),
        ({"inputs": [[]]}, 422, "wrong_dimension", ("row 0", "0 values")),
        (
            {"inputs": [[1.0, 2.0]], "metod": "exact"},
            422,
            "validation_error",
            ("metod", "unknown field (did you mean 'method'?)"),
        ),
        ({"inputs": [[1.0, 2.0]], "method": "fast"}, 422, "validation_error", ("method",)),
        ({"inputs": [[1.0, 2.0]], "slq": {"probes": 0}}, 422, "validation_error", ("slq.probes",)),
        ({"inputs": [[1.0, 2.0]], "seed": -1}, 422, "validation_error", ("seed",)),
        ({}, 422, "validation_error", ("inputs is missing",)),
        ([[1.0, 2.0]], 422, "validation_error", ()),
    ],
)
def test_bad_log_prob_bodies(client, payload, status, code, needles):
    r = client.post(LP, json=payload)
    assert_envelope(r, status, code, *needles)
    # pydantic's union alternatives (float | list[list[float]]) never reach the message
    assert "list[list" not in r.json()["error"]["message"]
    assert "valid list" not in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "needles"),
    [
        (
            LP,
            {"inputs": [[0.5, 0.1]], "seeds": 1},
            ("seeds: unknown field (did you mean 'seed'?)",),
        ),
        (
            "/v1/jobs",
            {"model_name": "m", "dataset": {"builtin": "rings"}, "training": {"learning_rate": 1}},
            ("training.learning_rate: unknown field (did you mean 'lr'?)", "allowed here:"),
        ),
        (
            "/v1/jobs",
            {"model_name": "m", "dataset": {"builtin": "two_moon"}},
            ("unknown built-in data set 'two_moon' (did you mean 'two_moons'?)",),
        ),
        (
            "/v1/jobs",
            {"model_name": "m", "dataset": {"builtin": "rings"}, "preset": "toyy"},
            ("preset: 'toyy' is not one of auto, demo", "(did you mean 'toy'?)"),
        ),
        (
            "/v1/jobs",
            {"model_name": "m", "dataset": {"id": "abc", "context_colums": [1]}},
            ("dataset.context_colums: unknown field (did you mean 'context_columns'?)",),
        ),
    ],
)
def test_unknown_names_get_the_closest_one(client, path, body, needles):
    """One message per mistake, naming the closest allowed field or data set; of the data set
    union (builtin | id) only the alternative the body meant is reported."""
    r = client.post(path, json=body)
    assert_envelope(r, 422, "validation_error", *needles)
    message = r.json()["error"]["message"]
    assert "BuiltinDataset" not in message and "UploadedDataset" not in message
    assert message.count("; ") <= 1 or "allowed here" in message


@pytest.mark.parametrize(
    "raw", [b"NaN", b'{"inputs": [[NaN, 1.0]]}', b'{"inputs": [[Infinity, 1]]}']
)
def test_nan_and_infinity_literals_are_rejected(client, raw):
    r = client.post(LP, content=raw, headers={"content-type": "application/json"})
    assert_envelope(r, 422, "validation_error")


def test_malformed_json(client):
    r = client.post(
        LP, content=b'{"inputs": [[1, 2]', headers={"content-type": "application/json"}
    )
    assert_envelope(r, 400, "malformed_json", "not valid JSON")


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type(client, ctype):
    headers = {"content-type": ctype} if ctype else {}
    r = client.post(LP, content=json.dumps({"inputs": [[1, 2]]}).encode(), headers=headers)
    assert_envelope(r, 415, "unsupported_media_type", "application/json")


def test_body_too_large_declared(client):
    big = b'{"inputs": [' + b"[1.0, 2.0]," * 120_000 + b"[1.0, 2.0]]}"  # > 1 MiB limit
    r = client.post(
        LP, content=big, headers={"content-type": "application/json", "X-Request-ID": "big-1"}
    )
    assert_envelope(r, 413, "payload_too_large", "limit")
    assert r.headers.get_list("x-request-id") == ["big-1"]  # once, from the outer middleware


def test_body_too_large_chunked(client):
    def gen():
        yield b'{"inputs": ['
        for _ in range(2000):
            yield b"[1.0, 2.0]," * 100
        yield b"[1.0, 2.0]]}"

    r = client.post(LP, content=gen(), headers={"content-type": "application/json"})
    assert_envelope(r, 413, "payload_too_large")


def test_too_many_rows(client):
    r = client.post(LP, json={"inputs": [[0.0, 0.0]] * 6001})
    assert_envelope(r, 422, "too_many_rows", "6001", "6000")


def test_too_many_samples(client):
    r = client.post("/v1/models/toy2d/sample", json={"num_samples": 3001})
    assert_envelope(r, 422, "too_many_samples", "3000")


@pytest.mark.parametrize(
    "payload",
    [{"num_samples": 0}, {"num_samples": "5"}, {"num_samples": 2.5}, {"num_samples": 5, "tolerance": -1},
     {"num_samples": 5, "max_iterations": 0}, {"num_samples": 5, "seed": "x"}, {"num_samples": 5, "n": 1}],
)  # fmt: skip
def test_bad_sample_bodies(client, payload):
    assert_envelope(client.post("/v1/models/toy2d/sample", json=payload), 422, "validation_error")


@pytest.mark.parametrize(
    "payload",
    [{"inputs": [[1, 2]], "direction": "sideways"}, {"inputs": [[1, 2]], "extra": 1},
     {"inputs": "1,2"}],
)  # fmt: skip
def test_bad_transport_bodies(client, payload):
    assert_envelope(
        client.post("/v1/models/toy2d/transport", json=payload), 422, "validation_error"
    )


def test_unknown_model_and_version(client):
    assert_envelope(
        client.post("/v1/models/nope/log_prob", json={"inputs": [[1, 2]]}),
        404,
        "model_not_found",
        "nope",
    )
    r = client.post("/v1/models/toy2d/versions/7/sample", json={"num_samples": 1})
    assert_envelope(r, 404, "model_not_found", "version 7")
    assert_envelope(client.get("/v1/models/nope"), 404, "model_not_found")
    assert_envelope(client.get("/v1/models/toy2d/versions/0"), 422, "validation_error")
    assert_envelope(client.get("/v1/models/toy2d/versions/abc"), 422, "validation_error")
    r = client.get("/v1/models/toy2d/plots/densty.png")
    assert_envelope(r, 404, "plot_not_found", "(did you mean 'density.png'?)", "density.png")
    r = client.post("/v1/models/toy2/log_prob", json={"inputs": [[1, 2]]})
    assert_envelope(r, 404, "model_not_found", "(did you mean 'toy2d'?)")
    assert_envelope(client.get("/v1/models/.hidden"), 422, "invalid_name")


def test_unknown_route_and_method(client):
    # (under /v2, the Open Inference Protocol, errors take its shape: test_service_v2)
    assert_envelope(client.get("/v3/nothing"), 404, "not_found")
    assert_envelope(client.get(LP), 405, "method_not_allowed")
    assert_envelope(client.delete("/healthz"), 405, "method_not_allowed")


def test_corrupted_model_is_503_and_others_keep_serving(client):
    for _ in range(2):  # the second answer comes from the remembered failure
        err = assert_envelope(
            client.post("/v1/models/broken/log_prob", json={"inputs": [[1, 2]]}),
            503,
            "model_corrupt",
        )
        assert "weights.safetensors" in err["message"] and "sha256" in err["message"]
    ok = client.post(LP, json={"inputs": [[1, 2]]})
    assert ok.status_code == 200
