"""Calibrated scores and drift through real servers: percentiles and outlier flags under /v1
JSON, /v1 CSV and /v2; 422 calibration_unavailable for a version without held-out scores; the
drift window shared by two replicas over Redis, in GET .../drift and /metrics."""

from __future__ import annotations

import csv
import io
import time

import httpx
import numpy as np
import pytest
import torch
from scipy import stats

from model_store import ModelStore
from model_store.calibration import Reference, reference_summary
from tests.helpers.flows import make_flow
from tests.helpers.procs import REDIS_URL, connect_test_redis, new_queue_name, purge
from tests.helpers.service import run_server

_SCALE = np.array([0.5, 2.0])  # make_flow's data: N(1, diag(0.5, 2.0)^2), the known density
WINDOW = 4000


def _draw(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 2)) * _SCALE + 1.0).astype(np.float32)


def _publish(root) -> Reference:
    flow = make_flow(2, seed=5)
    with torch.no_grad():
        held = flow.log_prob(torch.from_numpy(_draw(20_000, 0)), method="exact").numpy()
    calibration = reference_summary(held, split="test", method="exact")
    store = ModelStore(root)
    store.publish("calib", flow, training={"calibration": calibration})
    store.publish("plain", make_flow(2, seed=6))  # as published before calibrated scores
    reference = Reference.from_manifest({"training": {"calibration": calibration}})
    assert reference is not None
    return reference


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """Two servers over one store, sharing Redis (the drift window) under a fresh prefix."""
    root = tmp_path_factory.mktemp("calib") / "store"
    reference = _publish(root)
    queue = new_queue_name()
    env = {"CPFLOW_STORE_DIR": str(root), "CPFLOW_REDIS_URL": REDIS_URL,
           "CPFLOW_QUEUE_NAME": queue, "CPFLOW_DRIFT_WINDOW": str(WINDOW)}  # fmt: skip
    logs = tmp_path_factory.mktemp("logs")
    try:
        with run_server(env, log_path=logs / "a.log") as a, run_server(env, log_path=logs / "b.log") as b:  # fmt: skip
            yield a, b, reference
    finally:
        purge(connect_test_redis(), queue)


def _log_prob(url: str, rows: np.ndarray, **options) -> dict:
    body = {"inputs": rows.tolist(), "method": "exact", **options}
    r = httpx.post(f"{url}/v1/models/calib/log_prob", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_percentiles_of_fresh_rows_are_uniform(replicas) -> None:
    a, _, reference = replicas
    out = _log_prob(a, _draw(4000, 1), outlier_level=0.01)
    pct = np.array(out["percentile"])
    # the answer ranks the returned log p among the stored held-out scores
    np.testing.assert_allclose(pct, reference.percentiles(np.array(out["log_prob"])), atol=1e-12)
    assert stats.kstest(pct, "uniform").pvalue > 0.01
    flagged = np.array(out["outlier"])
    assert out["outlier_level"] == 0.01 and np.array_equal(flagged, pct < 0.01)
    assert abs(flagged.mean() - 0.01) < 3.5 * np.sqrt(0.01 * 0.99 / 4000)
    far = _log_prob(a, np.array([[1.0, 30.0]]), percentile=True)
    assert far["percentile"] == [0.0] and far["outlier"] is None


def test_csv_and_v2_answer_the_same_percentiles(replicas) -> None:
    a, _, _ = replicas
    rows = _draw(50, 2)
    want = _log_prob(a, rows, outlier_level=0.2)
    text = "x,y\n" + "".join(f"{u!r},{v!r}\n" for u, v in rows.tolist())
    r = httpx.post(
        f"{a}/v1/models/calib/log_prob.csv", params={"outlier_level": 0.2, "method": "exact"},
        content=text, headers={"Content-Type": "text/csv"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert list(table[0]) == ["x", "y", "log_prob", "percentile", "outlier"]
    np.testing.assert_allclose([float(t["percentile"]) for t in table], want["percentile"])
    assert [t["outlier"] == "1.0" for t in table] == want["outlier"]
    tensor = {"name": "input", "shape": [50, 2], "datatype": "FP32", "data": rows.ravel().tolist()}
    body = {"inputs": [tensor], "parameters": {"method": "exact", "outlier_level": 0.2}}
    v2 = httpx.post(f"{a}/v2/models/calib/infer", json=body).json()
    outputs = {o["name"]: o for o in v2["outputs"]}
    assert outputs["outlier"]["datatype"] == "BOOL" and v2["parameters"]["outlier_level"] == 0.2
    np.testing.assert_allclose(outputs["percentile"]["data"], want["percentile"])
    assert outputs["outlier"]["data"] == want["outlier"]


def test_version_without_held_out_scores_is_a_clear_422(replicas) -> None:
    a, _, _ = replicas
    answers = [
        httpx.post(f"{a}/v1/models/plain/log_prob", json={"inputs": [[0.0, 0.0]], "percentile": True}),
        httpx.post(f"{a}/v1/models/plain/log_prob.csv?percentile=true", content="1,2\n",
                   headers={"Content-Type": "text/csv"}),
        httpx.get(f"{a}/v1/models/plain/drift"),
    ]  # fmt: skip
    for r in answers:
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "calibration_unavailable"
        assert "retrain" in r.json()["error"]["message"]
    body = {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, 0]}],
            "parameters": {"percentile": True}}  # fmt: skip
    v2 = httpx.post(f"{a}/v2/models/plain/infer", json=body)
    assert v2.status_code == 422 and "held-out" in v2.json()["error"]
    # plain scoring of that version still works
    assert httpx.post(f"{a}/v1/models/plain/log_prob", json={"inputs": [[0.0, 0.0]]}).status_code == 200  # fmt: skip


def _drift(url: str) -> dict:
    r = httpx.get(f"{url}/v1/models/calib/versions/1/drift")
    assert r.status_code == 200, r.text
    return r.json()


def _score_split(a: str, b: str, rows: np.ndarray) -> None:
    """Half the rows through each replica, in 500-row requests."""
    for i, start in enumerate(range(0, len(rows), 500)):
        _log_prob(a if i % 2 == 0 else b, rows[start : start + 500])


def test_drift_shared_by_two_replicas_and_flagged_for_a_half_sd_shift(replicas) -> None:
    a, b, _ = replicas
    _score_split(a, b, _draw(WINDOW, 3))
    time.sleep(1.5)  # each replica pushes its buffered scores once a second
    calm_a, calm_b = _drift(a), _drift(b)
    assert calm_a["window"] == calm_b["window"] == {"rows": WINDOW, "capacity": WINDOW, "scope": "shared"}  # fmt: skip
    assert calm_a["statistic"] == calm_b["statistic"]
    assert calm_a["p_value"] > 0.01 and not calm_a["drifted"]
    shifted = _draw(WINDOW, 4)
    shifted[:, 1] += 0.5 * _SCALE[1]  # half a standard deviation in one column
    _score_split(a, b, shifted)
    time.sleep(1.5)
    moved = _drift(b)
    assert moved["window"]["rows"] == WINDOW and moved["drifted"]
    assert moved["p_value"] < 0.01 < calm_a["p_value"]
    hist = moved["histogram"]
    assert len(hist["edges"]) == len(hist["heldout"]) + 1 == len(hist["window"]) + 1
    assert sum(hist["heldout"]) == pytest.approx(1.0) and sum(hist["window"]) == pytest.approx(1.0)
    metrics = httpx.get(f"{a}/metrics").text
    line = next(ln for ln in metrics.splitlines() if ln.startswith("cpflow_drift_p_value{"))
    assert 'model="calib"' in line and 'version="1"' in line
    assert float(line.rsplit(" ", 1)[1]) < 0.01
