"""The job function in process (no RQ): built-in data, upload splits, progress and result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import redis

from model_store import ModelStore
from service.queue import JobQueue
from tests.jobs.jobs_stack import SHORT_TRAINING, TINY_MODEL, in_process_runtime
from training.jobs import JobRecorder, run_with_recorder, split_upload


def test_split_upload_keeps_every_row_once_and_the_store_id() -> None:
    x = np.random.default_rng(0).normal(size=(100, 2))
    s = split_upload(x, name="u", sha256="abc", seed=3)
    rows = np.concatenate([s.train, s.val, s.test])
    assert len(s.val) >= 1 and len(s.test) >= 1 and len(s.train) > len(s.val)
    # a permutation of the rows
    np.testing.assert_array_equal(np.sort(rows[:, 0]), np.sort(x[:, 0].astype(np.float32)))
    assert s.sha256 == "abc" and s.train.dtype == np.float32
    again = split_upload(x, name="u", sha256="abc", seed=3)
    np.testing.assert_array_equal(again.test, s.test)  # seeded


def test_builtin_job_publishes_and_records_its_result(
    redis_conn: redis.Redis, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_dir = tmp_path / "store"
    monkeypatch.setenv("CPFLOW_STORE_DIR", str(store_dir))
    queue = JobQueue(redis_conn, queue_name=queue_name, heartbeat_s=0.2)
    spec = {
        "model_name": "g8",
        "dataset": {"builtin": "eight_gaussians", "num_samples": 400, "seed": 0},
        "model": {**TINY_MODEL, "dim": 2, "radial_units": 3},
        "training": {**SHORT_TRAINING, "warmup_iterations": 5},
        "plots": False,
    }
    job = queue.submit(spec, model_name="g8", dataset_id=None)
    runtime = in_process_runtime(queue_name, job)
    events = []
    recorder = JobRecorder(redis_conn, runtime)
    original = recorder.progress
    recorder.progress = lambda values, force=False: (
        events.append(values),
        original(values, force=force),
    )
    out = run_with_recorder({**spec, "runtime": runtime}, recorder)
    assert out["status"] == "succeeded" and out["model"] == "g8" and out["version"] == 1
    done = queue.get(job["id"])
    assert done["status"] == "succeeded" and done["result"]["version"] == 1
    assert np.isfinite(done["result"]["test_nll"])
    # Progress went up to the full budget, with a real validation NLL.
    iterations = [e["iteration"] for e in events]
    assert iterations == sorted(iterations) and iterations[-1] == SHORT_TRAINING["iterations"]
    assert all(e["total"] == SHORT_TRAINING["iterations"] for e in events)
    manifest = ModelStore(store_dir).manifest("g8")
    assert manifest["training"]["job_id"] == job["id"]
    assert manifest["training"]["dataset"] == "eight_gaussians"
    # the spec reached the trainer
    assert manifest["training"]["config"]["warmup_iterations"] == 5
    assert ModelStore(store_dir).load("g8").flow.config.potential.radial_units == 3
    assert json.loads(json.dumps(done))  # the public view is plain JSON


def test_conditional_job_honours_every_trainer_setting(
    redis_conn: redis.Redis, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Conditional jobs run the one trainer: schedule, warm-up and early stopping (refused with
    422 conditional_option_unsupported while they had a trainer of their own) reach it."""
    store_dir = tmp_path / "store"
    monkeypatch.setenv("CPFLOW_STORE_DIR", str(store_dir))
    queue = JobQueue(redis_conn, queue_name=queue_name, heartbeat_s=0.2)
    training = {
        **SHORT_TRAINING,
        "schedule": "plateau",
        "warmup_iterations": 3,
        "early_stopping_patience": 50,
    }
    spec = {
        "model_name": "mog",
        "dataset": {"builtin": "mog1d", "num_samples": 400, "seed": 0},
        "model": TINY_MODEL,
        "training": training,
        "plots": False,
    }
    job = queue.submit(spec, model_name="mog", dataset_id=None)
    runtime = in_process_runtime(queue_name, job)
    out = run_with_recorder({**spec, "runtime": runtime}, JobRecorder(redis_conn, runtime))
    assert out["status"] == "succeeded", out
    manifest = ModelStore(store_dir).manifest("mog")
    config = manifest["training"]["config"]
    assert (config["schedule"], config["warmup_iterations"]) == ("plateau", 3)
    assert config["early_stopping_patience"] == 50
    assert manifest["training"]["kind"] == "conditional"
    assert ModelStore(store_dir).load("mog").flow.context_dim == 1


def test_job_with_a_preset_records_its_phases_and_what_it_resolved(
    redis_conn: redis.Redis, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job naming the toy preset trains with the preset's settings where it gave none, says
    so in its record (``resolved``, with the spec as submitted) and passes through every
    phase in order."""
    monkeypatch.setenv("CPFLOW_STORE_DIR", str(tmp_path / "store"))
    queue = JobQueue(redis_conn, queue_name=queue_name, heartbeat_s=0.2)
    spec = {
        "model_name": "toyjob",
        "preset": "toy",
        "dataset": {"builtin": "two_moons", "num_samples": 400, "seed": 0},
        "model": {"blocks": 1, "hidden": 8},  # depth and the rest: the preset's
        "training": {**SHORT_TRAINING},
        "plots": True,
    }
    job = queue.submit(spec, model_name="toyjob", dataset_id=None)
    runtime = in_process_runtime(queue_name, job)
    recorder = JobRecorder(redis_conn, runtime)
    phases: list[str] = []
    snapshots: list[dict] = []
    original = recorder.stage

    def stage(phase: str, details: dict | None = None) -> None:
        original(phase, details)
        if not phases or phases[-1] != phase:
            phases.append(phase)
            snapshots.append(queue.get(job["id"]))

    recorder.stage = stage  # type: ignore[method-assign]
    out = run_with_recorder({**spec, "runtime": runtime}, recorder)
    assert out["status"] == "succeeded", out
    assert phases == ["loading", "training", "evaluating", "plotting", "publishing"]
    # Each phase was in the record while the job was in it.
    assert [s["phase"] for s in snapshots] == phases
    done = queue.get(job["id"])
    assert done["spec"]["preset"] == "toy"
    resolved = done["resolved"]
    assert resolved["preset"] == "toy" and resolved["data"]["name"] == "two_moons"
    toy = {"depth": 3, "icnn": "augmented", "activation": "logistic"}  # training/presets.py
    assert {k: resolved["model"][k] for k in toy} == toy
    assert resolved["model"]["blocks"] == 1 and resolved["model"]["hidden"] == 8
    assert resolved["training"]["schedule"] == "cosine"  # the preset's
    assert resolved["training"]["lr"] == SHORT_TRAINING["lr"]  # given: wins over the preset
    manifest = ModelStore(tmp_path / "store").manifest("toyjob")
    assert manifest["training"]["preset"] == "toy"


def test_an_auto_job_records_the_recipe_choices_with_reasons(
    redis_conn: redis.Redis, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CPFLOW_STORE_DIR", str(tmp_path / "store"))
    queue = JobQueue(redis_conn, queue_name=queue_name, heartbeat_s=0.2)
    spec = {
        "model_name": "autojob",
        "dataset": {"builtin": "sklearn:iris", "seed": 0},
        "model": {**TINY_MODEL},
        "training": {**SHORT_TRAINING},
        "plots": False,
    }
    job = queue.submit(spec, model_name="autojob", dataset_id=None)
    runtime = in_process_runtime(queue_name, job)
    out = run_with_recorder({**spec, "runtime": runtime}, JobRecorder(redis_conn, runtime))
    assert out["status"] == "succeeded", out
    resolved = queue.get(job["id"])["resolved"]
    assert resolved["preset"] == "auto"
    manifest_auto = ModelStore(tmp_path / "store").manifest("autojob")["training"]["auto"]
    assert resolved["auto"] == manifest_auto  # the same choices and reasons as published


def test_a_timed_job_plans_its_iterations_and_records_its_budget(
    redis_conn: redis.Redis, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_dir = tmp_path / "store"
    monkeypatch.setenv("CPFLOW_STORE_DIR", str(store_dir))
    queue = JobQueue(redis_conn, queue_name=queue_name, heartbeat_s=0.2)
    training = {k: v for k, v in SHORT_TRAINING.items() if k != "iterations"}
    spec = {
        "model_name": "timed",
        "dataset": {"builtin": "two_moons", "num_samples": 300, "seed": 0},
        "model": {**TINY_MODEL, "dim": 2},
        "training": {**training, "iterations": None, "time_budget_s": 4.0},
        "plots": False,
    }
    job = queue.submit(spec, model_name="timed", dataset_id=None)
    runtime = in_process_runtime(queue_name, job)
    events = []
    recorder = JobRecorder(redis_conn, runtime)
    original = recorder.progress
    recorder.progress = lambda values, force=False: (
        events.append(values),
        original(values, force=force),
    )
    out = run_with_recorder({**spec, "runtime": runtime}, recorder)
    assert out["status"] == "succeeded"
    training_record = ModelStore(store_dir).manifest("timed")["training"]
    budget = training_record["time_budget"]
    assert training_record["config"]["time_budget_s"] == 4.0
    assert training_record["config"]["iterations"] is None
    run = training_record["iterations_run"]
    # The plan's iterations, unless the budget guard or early stopping ended the run first
    # (a quiet machine plans more iterations than the patience lets a 300-row run use).
    ended_early = budget["stopped_by_budget"] or training_record["stopped_early"]
    assert run == budget["plan"]["iterations"] or (
        ended_early and run < budget["plan"]["iterations"]
    )
    # the progress total is unknown while the first steps are timed, then the planned one
    totals = [e["total"] for e in events if "total" in e]
    assert totals[0] is None and totals[-1] == budget["plan"]["iterations"]
