"""The /v1 JSON codec (service.json_codec): numeric inputs parsed straight into one array must
be accepted and refused exactly as the per-number validation does, and answers written from
arrays must be the JSON the response schemas write."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from service import schemas
from service.json_codec import json_array, json_response, parse_body

GOOD = [
    b'{"inputs": [[0.5, -1.25], [3, 4e-3]], "method": "exact"}',
    b'{"inputs": [[1, 2, 3]]}',
    b'{"inputs": [[[[0.1, 0.2], [0.3, 0.4]]], [[[1, 2], [3, 4]]]]}',  # [n, C, H, W]
    b'{"inputs": [[1e308, -1e-320]]}',
    b'{"inputs": [[0.5, 100000000000000000000000000000000]]}',  # an int beyond 64 bits
    b'{"inputs": [[0.5, 1.0]], "method": "slq", "slq": {"probes": 4}, "seed": 3}',
]
BAD = [
    b'{"inputs": [[0.5, true]]}',  # numpy would make true 1.0
    b'{"inputs": [[false, 1]]}',
    b'{"inputs": [[0.5, "1.0"]]}',
    b'{"inputs": [[0.5, null]]}',
    b'{"inputs": [[0.5, NaN]]}',  # the standard library's extension: orjson refuses it
    b'{"inputs": [[0.5, Infinity]]}',
    b'{"inputs": [[0.5, 1e400]]}',  # overflows a double to infinity
    b'{"inputs": [[0.5, 1.0], [2.0]]}',  # ragged (still valid: the route names the row)
    b'{"inputs": [[[0.5, 1.0]]]}',  # three levels
    b'{"inputs": []}',
    b'{"inputs": [[]]}',
    b'{"inputs": [0.5, 1.0]}',
    b'{"inputs": [[0.5, {"a": 1}]]}',
    b'{"inputs": [[0.5, 1.0]], "method": "bogus"}',
    b'{"inputs": [[0.5, 1.0]], "typo": 1}',
]


def _outcome(model: type, value: object) -> object:
    try:
        parsed = model.model_validate(value)
    except ValidationError as exc:
        return [(e["loc"], e["type"], e["msg"]) for e in exc.errors()]
    inputs = parsed.inputs
    rows = inputs.tolist() if isinstance(inputs, np.ndarray) else inputs
    return {**parsed.model_dump(exclude={"inputs"}), "inputs": rows}  # 3 == 3.0


@pytest.mark.parametrize("body", GOOD + BAD)
@pytest.mark.parametrize("model", [schemas.LogProbRequest, schemas.TransportRequest])
def test_parsed_bodies_validate_as_the_standard_parser_and_schema_do(body, model):
    """The same accepted values, or the same errors (loc, type, message), as json.loads."""
    if b"slq" in body and model is schemas.TransportRequest:
        body = b'{"inputs": [[0.5, 1.0]], "direction": "inverse", "tolerance": 1e-3}'
    assert _outcome(model, parse_body(body)) == _outcome(model, json.loads(body))


@pytest.mark.parametrize("body", GOOD)
def test_numeric_inputs_become_one_float64_array(body):
    inputs = parse_body(body)["inputs"]
    assert isinstance(inputs, np.ndarray) and inputs.dtype == np.float64
    np.testing.assert_array_equal(inputs, np.asarray(json.loads(body)["inputs"], float))


@pytest.mark.parametrize("body", BAD[:9])
def test_anything_else_stays_as_json_lists(body):
    assert isinstance(parse_body(body)["inputs"], list)


def test_invalid_json_raises_the_standard_decode_error():
    with pytest.raises(json.JSONDecodeError) as caught:
        parse_body(b'{"inputs": [[1, 2]')
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(b'{"inputs": [[1, 2]')
    assert (caught.value.msg, caught.value.pos) == (expected.value.msg, expected.value.pos)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_answers_are_the_json_the_schemas_write(dtype):
    t = torch.tensor([[0.1, -2.5e-7], [float("inf"), float("nan")], [1e30, 3.0]], dtype=dtype)
    fields = {"model": "m", "version": 2, "direction": "forward", "max_residual": None,
              "converged": None}  # fmt: skip
    fast = json_response(schemas.TransportResponse, outputs=json_array(t), **fields)
    outputs = [[v if np.isfinite(v) else None for v in row] for row in t.tolist()]
    slow = schemas.TransportResponse(outputs=outputs, **fields).model_dump_json()
    assert fast.media_type == "application/json"
    assert json.loads(fast.body) == json.loads(slow)
    lp = json_response(schemas.LogProbResponse, model="m", version=1, method="exact",
                       log_prob=json_array(t[:, 1]), stderr=None)  # fmt: skip
    column = [row[1] for row in outputs]
    slow_lp = schemas.LogProbResponse(model="m", version=1, method="exact", log_prob=column,
                                      stderr=None)  # fmt: skip
    assert json.loads(lp.body) == json.loads(slow_lp.model_dump_json())


def test_images_are_written_in_the_callers_layout():
    t = torch.arange(2 * 12, dtype=torch.float64).reshape(2, 12)
    out = json.loads(
        json_response(
            schemas.SampleResponse,
            model="m",
            version=1,
            samples=json_array(t, (3, 2, 2)),
            max_residual=1e-6,
            converged=True,
            seed=0,
        ).body
    )
    assert np.asarray(out["samples"]).shape == (2, 3, 2, 2)
    np.testing.assert_array_equal(np.asarray(out["samples"]).reshape(2, 12), t.numpy())


def test_an_unknown_field_is_a_programming_error():
    with pytest.raises(TypeError, match="rank"):
        json_response(schemas.LogProbResponse, model="m", version=1, method="exact",
                      log_prob=np.zeros(1), stderr=None, rank=[0.5])  # fmt: skip
