"""POST .../log_prob.csv through a real uvicorn process: a CSV in, the same rows with their
log_prob out, equal to the library's values; bad files are 4xx naming what to fix.

Reference values come from ``ModelStore.load`` in this process (no HTTP, no batching). float32
models: ~1e-5 relative covers round-off between a batched and an unbatched evaluation. The CSV
carries values as Python reprs (shortest round-trip), so parsing them loses nothing.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch

from model_store import ModelStore


def _csv(rows: np.ndarray, header: str | None = "a,b") -> bytes:
    lines = [header] if header else []
    lines += [",".join(repr(float(v)) for v in row) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def _parse(text: str) -> tuple[list[str], np.ndarray]:
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], np.array(rows[1:], dtype=np.float64)


def _post(client, path: str, body: bytes, **params):
    headers = {"Content-Type": "text/csv"}
    return client.post(path, content=body, headers=headers, params=params)


def test_scored_csv_equals_library_across_batches(client, store_dir):
    # 12,500 rows: three batches of the server's CPFLOW_MAX_BATCH (6000), streamed out in order.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12_500, 2)) * 1.5 + 1.0
    r = _post(client, "/v1/models/toy2d/log_prob.csv", _csv(x), method="exact")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["x-cpflow-method"] == "exact"
    assert 'filename="toy2d-v1-scored.csv"' in r.headers["content-disposition"]
    header, values = _parse(r.text)
    assert header == ["a", "b", "log_prob"]
    np.testing.assert_array_equal(values[:, :2], x)  # inputs echoed exactly, in order
    flow = ModelStore(store_dir).load("toy2d").flow
    expected = flow.log_prob(torch.tensor(x, dtype=torch.float32), method="exact").detach()
    np.testing.assert_allclose(values[:, 2], expected.numpy(), rtol=1e-5, atol=1e-5)


def test_pinned_version_and_no_header(client):
    x = np.array([[0.5, -1.0], [2.0, 0.25], [0.0, 0.0]])
    r = _post(client, "/v1/models/toy2d/versions/1/log_prob.csv", _csv(x, header=None))
    assert r.status_code == 200, r.text
    header, values = _parse(r.text)
    assert header == ["x1", "x2", "log_prob"]
    json_lp = client.post("/v1/models/toy2d/log_prob", json={"inputs": x.tolist()}).json()
    np.testing.assert_allclose(values[:, 2], json_lp["log_prob"], rtol=1e-5, atol=1e-5)


def test_slq_adds_stderr_and_repeats_with_seed(client):
    x = np.random.default_rng(1).normal(size=(20, 4))
    body = _csv(x, header="p,q,r,s")
    first = _post(client, "/v1/models/toy4d/log_prob.csv", body, method="slq", seed=5, probes=4)
    again = _post(client, "/v1/models/toy4d/log_prob.csv", body, method="slq", seed=5, probes=4)
    assert first.status_code == 200, first.text
    assert first.headers["x-cpflow-seed"] == "5"
    header, values = _parse(first.text)
    assert header == ["p", "q", "r", "s", "log_prob", "stderr"]
    assert (values[:, 5] > 0).all()
    assert first.text == again.text


@pytest.mark.parametrize(
    ("body", "ctype", "status", "code", "says"),
    [
        (b"1,2\n3,4\n", "application/json", 415, "unsupported_media_type", "text/csv"),
        (b"", "text/csv", 422, "invalid_csv", "no rows"),
        (b"a,b\n1,2\n3\n", "text/csv", 422, "invalid_csv", "data row 2 has 1 columns"),
        (b"a,b\n1,2\n3,x\n", "text/csv", 422, "invalid_csv", "non-numeric value 'x'"),
        (b"a,b,c\n1,2\n", "text/csv", 422, "invalid_csv", "header has 3 names"),
        (b"1,2,3\n4,5,6\n", "text/csv", 422, "wrong_dimension", "expects 2"),
        (b"1,2\n1e39,0\n", "text/csv", 422, "value_out_of_range", "row 2, column 1 (1e+39) over"),
        (b"1,2\n0,nan\n", "text/csv", 422, "value_out_of_range", "row 2, column 2 (nan) is not"),
        (b"\r0", "text/csv", 422, "invalid_csv", "bare carriage return"),  # found by the fuzzer
    ],
)
def test_bad_csv_is_4xx_naming_the_problem(client, body, ctype, status, code, says):
    r = client.post("/v1/models/toy2d/log_prob.csv", content=body, headers={"Content-Type": ctype})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and says in error["message"], error


def test_unknown_model_is_404(client):
    r = _post(client, "/v1/models/nope/log_prob.csv", b"1,2\n")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text


def test_row_limit_is_stated(limited_server, auth_headers):
    import httpx

    rows = _csv(np.zeros((65, 2)))
    headers = {**auth_headers, "Content-Type": "text/csv"}
    r = httpx.post(limited_server + "/v1/models/toy2d/log_prob.csv", content=rows, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "too_many_rows"
    assert "at most 64" in r.json()["error"]["message"]


def test_csv_body_may_exceed_the_json_body_limit(client):
    # The server caps JSON bodies at 1 MiB (CPFLOW_MAX_BODY_BYTES); a CSV is an upload, capped by
    # CPFLOW_MAX_UPLOAD_BYTES instead.
    x = np.random.default_rng(3).normal(size=(30_000, 2))
    body = _csv(x)
    assert len(body) > 1024 * 1024
    r = _post(client, "/v1/models/toy2d/log_prob.csv", body)
    assert r.status_code == 200, r.text[:300]
    assert r.text.count("\n") == 30_001
