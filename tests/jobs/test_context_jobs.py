"""Conditional training jobs: context columns on an uploaded data set (checked at submit time),
the conditional built-ins, and a job through a real service + cpflow-worker whose published
model then answers log_prob with a context."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis
import torch

from model_store import ModelStore
from service.job_schemas import CONDITIONAL_BUILTIN_DATASETS
from service.queue import JobQueue
from tests.jobs.jobs_stack import TINY_MODEL, Stack, in_process_runtime
from training.jobs import JobRecorder, execute_spec, run_with_recorder
from training.trainer import TrainingCancelled

TRAINING = {"iterations": 20, "batch_size": 32, "val_every": 10, "lr": 5e-3}


def _conditional_rows(n: int = 200, seed: int = 0) -> np.ndarray:
    """Columns x0, x1, c: x shifts with the context c (the last column)."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(-1.0, 1.0, n)
    x = rng.normal(size=(n, 2)) * 0.5 + 2.0 * c[:, None]
    return np.column_stack([x, c])


def _upload(stack: Stack, array: np.ndarray, name: str) -> dict:
    header = ",".join(f"col{j}" for j in range(array.shape[1]))
    text = header + "\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in array)
    r = stack.client.post(
        "/v1/datasets", files={"file": (f"{name}.csv", text.encode())}, data={"name": name}
    )
    assert r.status_code in (200, 201), r.text
    return r.json()


def _body(dataset: dict, name: str = "cond-model") -> dict:
    return {"model_name": name, "dataset": dataset, "model": TINY_MODEL, "training": TRAINING}


def test_conditional_builtins_match_the_training_package() -> None:
    from training.datasets.conditional import CONDITIONAL_TOYS, make_conditional_toy

    assert set(CONDITIONAL_BUILTIN_DATASETS) == set(CONDITIONAL_TOYS)
    for name, (dim, context_dim) in CONDITIONAL_BUILTIN_DATASETS.items():
        splits = make_conditional_toy(name, num_samples=50)
        assert (splits.dim, splits.context_dim) == (dim, context_dim), name


@pytest.mark.integration  # a real uvicorn service and cpflow-workers (the stack)
@pytest.mark.parametrize(
    ("columns", "needle"),
    [
        ([3], "out of range"),
        ([-1], "out of range"),
        ([1, 1], "appears twice"),
        ([0, 1, 2], "leave at least one column"),
        ([], "at least one column"),
    ],
)
def test_bad_context_columns_are_422(stack: Stack, columns: list[int], needle: str) -> None:
    ds = _upload(stack, _conditional_rows(60, seed=1), "bad-columns")
    r = stack.client.post("/v1/jobs", json=_body({"id": ds["id"], "context_columns": columns}))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_context_columns" and needle in error["message"]
    assert "dataset.context_columns" in error["message"]
    assert stack.client.get("/v1/jobs").json() == []  # nothing was queued


@pytest.mark.integration  # a real uvicorn service and cpflow-workers (the stack)
@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"model": {**TINY_MODEL, "dim": 3}}, "dimension_mismatch"),  # 2 data columns
        ({"model": {**TINY_MODEL, "icnn": "dense"}}, "validation_error"),  # not a PICNN kind
        ({"model": {**TINY_MODEL, "radial_units": 4}}, "validation_error"),  # dense blocks only
    ],
)
def test_conditional_spec_problems_are_422(stack: Stack, change: dict, code: str) -> None:
    ds = _upload(stack, _conditional_rows(60, seed=1), "bad-spec")
    body = {**_body({"id": ds["id"], "context_columns": [2]}), **change}
    r = stack.client.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code


@pytest.mark.integration  # a real uvicorn service and cpflow-workers (the stack)
def test_conditional_upload_job_publishes_a_model_scored_with_context(stack: Stack) -> None:
    data = _conditional_rows()
    ds = _upload(stack, data, "cond-data")
    body = _body({"id": ds["id"], "context_columns": [2]})
    r = stack.client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    job = stack.wait_status(job_id, {"succeeded", "failed", "cancelled"})
    assert job["status"] == "succeeded", job
    assert job["result"]["model"] == "cond-model" and np.isfinite(job["result"]["test_nll"])
    progress = job["progress"]
    assert progress["iteration"] == progress["total"] == TRAINING["iterations"]
    assert np.isfinite(progress["val_nll"]) and progress["seconds_per_iteration"] > 0

    store = ModelStore(stack.store_dir)
    manifest = store.manifest("cond-model", job["result"]["version"])
    training = manifest["training"]
    assert training["kind"] == "conditional" and training["job_id"] == job_id
    assert training["context_columns"] == [2] and training["context_dim"] == 1
    assert training["sha256"] == ds["id"] and training["config"]["iterations"] == 20
    assert manifest["flow_config"]["potential"]["context_dim"] == 1 and manifest["dim"] == 2

    detail = stack.client.get("/v1/models/cond-model").json()
    assert detail["context_dim"] == 1 and detail["dim"] == 2
    x, c = data[:4, :2].tolist(), data[:4, 2:].tolist()
    r = stack.client.post("/v1/models/cond-model/log_prob", json={"inputs": x, "context": c})
    assert r.status_code == 200, r.text
    flow = store.load("cond-model").flow.eval()
    with torch.no_grad():
        ref = flow.log_prob(torch.tensor(x), torch.tensor(c), method="exact")
    np.testing.assert_allclose(r.json()["log_prob"], ref.double().numpy(), rtol=1e-4, atol=1e-4)
    missing = stack.client.post("/v1/models/cond-model/log_prob", json={"inputs": x})
    assert missing.status_code == 422
    assert missing.json()["error"]["code"] == "context_required"


def test_conditional_builtin_job_in_process(
    redis_conn: redis.Redis, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mog1d through run_with_recorder: progress like the unconditional trainer's; and a stop
    request ends a conditional run with TrainingCancelled, publishing nothing."""
    store_dir = tmp_path / "store"
    monkeypatch.setenv("CPFLOW_STORE_DIR", str(store_dir))
    queue = JobQueue(redis_conn, queue_name=queue_name, heartbeat_s=0.2)
    spec = {
        "model_name": "mog",
        "dataset": {"builtin": "mog1d", "num_samples": 300, "seed": 0},
        "model": {**TINY_MODEL, "dim": 1},
        "training": TRAINING,
        "plots": False,
    }
    job = queue.submit(spec, model_name="mog", dataset_id=None)
    runtime = in_process_runtime(queue_name, job)
    events: list[dict] = []
    recorder = JobRecorder(redis_conn, runtime)
    original = recorder.progress
    recorder.progress = lambda values, force=False: (
        events.append(values),
        original(values, force=force),
    )
    out = run_with_recorder({**spec, "runtime": runtime}, recorder)
    assert out["status"] == "succeeded" and out["model"] == "mog" and out["version"] == 1
    assert queue.get(job["id"])["status"] == "succeeded"
    assert events[-1]["iteration"] == events[-1]["total"] == 20
    assert np.isfinite(events[-1]["val_nll"]) and events[-1]["eta_s"] == pytest.approx(0.0)
    training = ModelStore(store_dir).manifest("mog", 1)["training"]
    assert training["dataset"] == "mog1d" and training["job_id"] == job["id"]
    assert training["context_dim"] == 1

    asked = []

    def stop_after_five() -> bool:
        asked.append(1)
        return len(asked) > 5

    with pytest.raises(TrainingCancelled) as info:
        execute_spec({**spec, "model_name": "mog-stopped"}, should_stop=stop_after_five)
    assert info.value.iteration == 5
    assert "mog-stopped" not in ModelStore(store_dir).names()
