"""The data plane (service.inference) called directly, with no HTTP: typed requests in, typed
results out, numbers equal to the flow's own, every check refused with its catalogued code
whether the inputs come as JSON lists or as arrays (the /v2 tensors), and the same numbers
through /v1 JSON, /v1 CSV and /v2 as through the data plane itself."""

from __future__ import annotations

import ast
import asyncio
import csv
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from cpflow import CPFlow, FlowConfig
from model_store import ModelStore
from service import inference as dp
from service.app import create_app
from service.engine import InferenceEngine
from service.errors import ApiError
from service.metrics import ServiceMetrics
from service.settings import Settings
from tests.helpers.flows import make_flow

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
ROWS = [[0.5, -1.2], [1.0, 0.3], [2.5, 1.5]]


def _conditional_flow() -> CPFlow:
    torch.manual_seed(3)
    flow = CPFlow(FlowConfig(dim=2, context_dim=1, blocks=1, hidden=8, depth=2))
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return flow


@pytest.fixture(scope="module")
def store_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dataplane") / "store"
    store = ModelStore(root)
    store.publish("toy", make_flow(2, seed=7))
    store.publish("wide", make_flow(3, seed=8))
    store.publish("cond", _conditional_flow())
    return root


def _settings(root: Path, **limits: Any) -> Settings:
    return Settings(
        store_dir=root, device="cpu", inference_threads=1, torch_threads=1,
        redis_url="redis://127.0.0.1:1/0", **limits,
    )  # fmt: skip


def _run(
    root: Path, call: Callable[[dp.DataPlane], Awaitable[T]], seen: list | None = None, **limits
) -> T:
    """``call(plane)`` on a fresh engine over ``root`` (one event loop, closed after)."""

    async def main() -> T:
        engine = InferenceEngine(_settings(root, **limits), ServiceMetrics())
        engine.start()
        try:
            plane = dp.DataPlane(engine, engine.settings, None if seen is None else seen.append)
            return await call(plane)
        finally:
            engine.close()

    return asyncio.run(main())


def _refused(root: Path, call: Callable[[dp.DataPlane], Awaitable[Any]], **limits) -> ApiError:
    with pytest.raises(ApiError) as info:
        _run(root, call, **limits)
    return info.value


def _reference(root: Path, name: str = "toy") -> CPFlow:
    """The stored flow loaded by the store itself, outside the service."""
    return ModelStore(root).load(name).flow


def test_log_prob_from_lists_and_arrays_equals_the_flows_own(store_root):
    seen: list[str] = []
    lists = _run(store_root, lambda p: p.log_prob(dp.LogProbRequest("toy", None, ROWS)), seen)
    array = np.array(ROWS, dtype=np.float32)
    arrays = _run(store_root, lambda p: p.log_prob(dp.LogProbRequest("toy", 1, array)))
    with torch.no_grad():
        want = _reference(store_root).log_prob(torch.tensor(ROWS), method="exact")
    assert (lists.model, lists.version, lists.method, lists.stderr) == ("toy", 1, "exact", None)
    torch.testing.assert_close(lists.log_prob, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(lists.log_prob, arrays.log_prob)
    assert seen == ["toy"]  # the resolved name, for the metrics label


def test_slq_is_repeatable_with_its_seed_and_reports_it(store_root):
    def call(p: dp.DataPlane):
        return p.log_prob(dp.LogProbRequest("toy", None, ROWS, "slq", probes=4, steps=5, seed=9))

    first, again = _run(store_root, call), _run(store_root, call)
    assert first.method == "slq" and first.seed == 9 and first.stderr is not None
    assert torch.equal(first.log_prob, again.log_prob)


def test_transport_forward_and_inverse(store_root):
    fwd = _run(store_root, lambda p: p.transport(dp.TransportRequest("toy", None, ROWS)))
    with torch.no_grad():
        want = _reference(store_root).transform(torch.tensor(ROWS))
    torch.testing.assert_close(fwd.outputs, want, rtol=1e-5, atol=1e-5)
    assert fwd.max_residual is None and fwd.converged is None and fwd.image_shape is None

    z = fwd.outputs.numpy()
    back = _run(
        store_root,
        lambda p: p.transport(dp.TransportRequest("toy", None, z, "inverse", tolerance=1e-6)),
    )
    assert back.converged and back.max_residual is not None and back.max_residual < 1e-4
    torch.testing.assert_close(back.outputs, torch.tensor(ROWS), rtol=1e-3, atol=1e-3)


def test_sample_is_seeded(store_root):
    def call(p: dp.DataPlane):
        return p.sample(dp.SampleRequest("toy", None, 5, seed=3))

    first, again = _run(store_root, call), _run(store_root, call)
    assert first.samples.shape == (5, 2) and first.seed == 3 and first.image_shape is None
    assert torch.equal(first.samples, again.samples)


def test_conditional_model_takes_a_context_from_lists_or_arrays(store_root):
    c = [[0.5]]
    lists = _run(
        store_root, lambda p: p.log_prob(dp.LogProbRequest("cond", None, ROWS, context=c))
    )
    arrays = _run(
        store_root,
        lambda p: p.log_prob(
            dp.LogProbRequest("cond", None, np.array(ROWS, "f4"), context=np.array(c, "f4"))
        ),
    )
    with torch.no_grad():
        x = torch.tensor(ROWS)
        want = _reference(store_root, "cond").log_prob(x, torch.full((3, 1), 0.5))
    torch.testing.assert_close(lists.log_prob, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(lists.log_prob, arrays.log_prob)
    err = _refused(store_root, lambda p: p.log_prob(dp.LogProbRequest("cond", None, ROWS)))
    assert (err.status, err.code) == (422, "context_required")


@pytest.mark.parametrize(
    ("inputs", "code", "words"),
    [
        ([[1.0, 2.0, 3.0]], "wrong_dimension", "row 0 has 3 values"),
        (np.zeros((1, 3), "f4"), "wrong_dimension", "row 0 has 3 values"),
        (np.zeros((1, 1, 2, 1), "f4"), "wrong_shape", "[1, 1, 2, 1]"),
        ([[1e39, 0.0]], "value_out_of_range", "inputs[0][0]"),
        (np.array([[1e39, 0.0]]), "value_out_of_range", "inputs[0][0]"),
        (np.array([[0.0, np.nan]], "f4"), "validation_error", "inputs[0][1]"),
        (np.zeros((0, 2), "f4"), "validation_error", "at least one row"),
    ],
)
def test_inputs_are_checked_alike_as_lists_or_arrays(store_root, inputs, code, words):
    err = _refused(store_root, lambda p: p.log_prob(dp.LogProbRequest("toy", None, inputs)))
    assert (err.status, err.code) == (422, code) and words in err.message, err.message


def test_limits_are_checked_before_the_model_is_looked_up(store_root):
    req = dp.LogProbRequest("no-such-model", None, ROWS)
    err = _refused(store_root, lambda p: p.log_prob(req), max_batch=2)
    assert (err.status, err.code) == (422, "too_many_rows")
    err = _refused(
        store_root,
        lambda p: p.sample(dp.SampleRequest("no-such-model", None, 5)),
        max_samples=4,
    )
    assert err.code == "too_many_samples"
    err = _refused(
        store_root,
        lambda p: p.sample(dp.SampleRequest("toy", None, 2, max_iterations=50)),
        max_inverse_iterations=10,
    )
    assert err.code == "too_many_iterations"


def test_plain_model_refuses_context_and_image_layout(store_root):
    err = _refused(
        store_root, lambda p: p.log_prob(dp.LogProbRequest("toy", None, ROWS, context=[[1.0]]))
    )
    assert err.code == "context_not_accepted"
    err = _refused(
        store_root, lambda p: p.sample(dp.SampleRequest("toy", None, 2, layout="image"))
    )
    assert (err.status, err.code) == (422, "wrong_shape")


def test_table_is_checked_whole_then_scored_in_batches(store_root):
    table = np.array(ROWS * 3, dtype=np.float64)  # 9 rows in batches of 4

    async def score(p: dp.DataPlane):
        scoring = await p.table(dp.TableRequest("toy", None, table))
        return scoring, [b async for b in scoring.batches()]

    scoring, batches = _run(store_root, score, max_batch=4)
    assert scoring.method == "exact" and scoring.seed is None
    assert [(b.start, b.stop) for b in batches] == [(0, 4), (4, 8), (8, 9)]
    whole = _run(store_root, lambda p: p.log_prob(dp.LogProbRequest("toy", None, table)))
    # equal up to float32 rounding: the batch size changes the order of the sums
    torch.testing.assert_close(torch.cat([b.log_prob for b in batches]), whole.log_prob)

    err = _refused(
        store_root, lambda p: p.table(dp.TableRequest("toy", None, table)), max_csv_rows=8
    )
    assert err.code == "too_many_rows" and "CPFLOW_MAX_CSV_ROWS" in err.message
    err = _refused(store_root, lambda p: p.table(dp.TableRequest("wide", None, table)))
    assert err.code == "wrong_dimension" and "expects 3" in err.message


def test_table_slq_draws_one_seed_for_every_batch(store_root):
    table = np.array(ROWS, dtype=np.float64)

    async def open_table(p: dp.DataPlane):
        return await p.table(dp.TableRequest("wide", None, np.hstack([table, table[:, :1]])))

    scoring = _run(store_root, open_table, exact_max_dim=2)
    assert scoring.method == "slq" and isinstance(scoring.seed, int)


def _csv_scores(text: str) -> list[float]:
    return [float(row["log_prob"]) for row in csv.DictReader(io.StringIO(text))]


def test_v1_json_v1_csv_and_v2_give_the_data_planes_numbers(store_root):
    """The three wire formats answer exactly what the data plane answers for the same rows."""
    direct = _run(store_root, lambda p: p.log_prob(dp.LogProbRequest("toy", None, ROWS)))
    want = direct.log_prob.tolist()
    with TestClient(create_app(_settings(store_root))) as c:
        v1 = c.post("/v1/models/toy/log_prob", json={"inputs": ROWS, "method": "exact"})
        body = "x,y\n" + "".join(f"{a!r},{b!r}\n" for a, b in ROWS)
        v1_csv = c.post(
            "/v1/models/toy/log_prob.csv?method=exact",
            content=body,
            headers={"Content-Type": "text/csv"},
        )
        tensor = {
            "name": "input",
            "shape": [3, 2],
            "datatype": "FP32",
            "data": [v for r in ROWS for v in r],
        }
        v2 = c.post("/v2/models/toy/infer", json={"inputs": [tensor]})
    assert v1.status_code == v1_csv.status_code == v2.status_code == 200, (v1.text, v2.text)
    assert v1.json()["log_prob"] == want
    assert _csv_scores(v1_csv.text) == want
    (out,) = v2.json()["outputs"]
    assert out["name"] == "log_prob" and out["data"] == want


def test_no_route_calls_another_protocols_handlers():
    """/v2 reaches the data plane, never the /v1 router (nor the other way round)."""
    for module, other in (
        ("v2", "service.routers.inference"),
        ("inference", "service.routers.v2"),
    ):
        tree = ast.parse((REPO / "service" / "routers" / f"{module}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
            a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names
        }
        assert other not in imported, f"service/routers/{module}.py imports {other}"
