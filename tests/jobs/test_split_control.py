"""Hold-outs under the user's control (#28): validation / test fractions, or the user's own
validation and test tables, for cpflow-train and for jobs; a table given as the test set is
not cut from the training table again (the training rows all go to train and validation)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from model_store import ModelStore
from service.app import create_app
from service.queue import record_key
from service.settings import Settings
from tests.jobs.jobs_stack import SHORT_TRAINING, TINY_MODEL, in_process_runtime
from training.cli import main as cli_main
from training.datasets import DatasetError, TableOptions
from training.datasets.tables import Holdout, table_splits
from training.jobs import JobRecorder, run_with_recorder

NAMES = ["u", "v", "w"]


def _table(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3)) * [1.0, 2.0, 3.0]


def _csv(values: np.ndarray, header: list[str] = NAMES) -> str:
    return (
        ",".join(header) + "\n" + "".join(",".join(f"{v:.6f}" for v in r) + "\n" for r in values)
    )


def test_fractions_and_given_tables_decide_the_parts() -> None:
    x = _table(200, 0)
    default = table_splits("t", x, NAMES, TableOptions())
    assert default.sizes == {"train": 140, "val": 30, "test": 30}
    chosen = table_splits("t", x, NAMES, TableOptions(val_fraction=0.1, test_fraction=0.2))
    assert chosen.sizes == {"train": 140, "val": 20, "test": 40}
    # A test table: the training table is cut for validation only.
    test = _table(50, 1)
    own = table_splits("t", x, NAMES, TableOptions(), test=Holdout(test, NAMES, "mine"))
    assert own.sizes == {"train": 170, "val": 30, "test": 50}
    np.testing.assert_array_equal(own.test, test.astype(np.float32))
    assert own.meta["split"]["test"] == "mine" and own.meta["split"]["test_fraction"] == 0.0
    # Both tables given: every training row trains.
    both = table_splits(
        "t", x, NAMES, TableOptions(),
        val=Holdout(_table(40, 2), NAMES, "v"), test=Holdout(test, NAMES, "t"),
    )  # fmt: skip
    assert both.sizes == {"train": 200, "val": 40, "test": 50}


def test_a_given_table_is_matched_by_column_name() -> None:
    x = _table(100, 0)
    test = _table(30, 1)
    shuffled = Holdout(test[:, [2, 0, 1]], ["w", "u", "v"], "mine")
    splits = table_splits("t", x, NAMES, TableOptions(), test=shuffled)
    np.testing.assert_array_equal(splits.test, test.astype(np.float32))
    with pytest.raises(DatasetError, match=r"columns \(u, v, z\) are not the training"):
        table_splits("t", x, NAMES, TableOptions(), test=Holdout(test, ["u", "v", "z"], "m"))
    with pytest.raises(DatasetError, match="leave the test fraction unset"):
        table_splits(
            "t", x, NAMES, TableOptions(test_fraction=0.2), test=Holdout(test, NAMES, "m")
        )
    # Columns dropped from the training table are dropped from the given table too.
    with_const = np.column_stack([x, np.ones(100)])
    splits = table_splits(
        "t", with_const, [*NAMES, "k"], TableOptions(drop_columns=("k",)),
        test=Holdout(np.column_stack([test, np.ones(30)]), [*NAMES, "k"], "m"),
    )  # fmt: skip
    assert splits.test.shape == (30, 3) and splits.meta["columns"] == NAMES


def test_cli_test_file_is_not_cut_again(tmp_path: Path, capsys) -> None:
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text(_csv(_table(100, 0)))
    test.write_text(_csv(_table(40, 1)))
    store = tmp_path / "store"
    args = ["--dataset", f"file:{train}", "--name", "m", "--store-dir", str(store), "--quiet"]
    extra = ["--test-file", str(test), "--val-fraction", "0.2", "--iterations", "5"]
    assert cli_main([*args, *extra, "--no-plots", "--no-onnx"]) == 0
    training = ModelStore(store).manifest("m")["training"]
    assert training["num_train"] == 80  # 100 rows less the 20% validation cut, no test cut
    assert training["split"]["test"] == f"file:{test}"
    assert training["split"]["val_fraction"] == 0.2
    summary = json.loads(capsys.readouterr().out)
    assert summary["split"]["test_fraction"] == 0.0


def test_cli_table_options_need_file_data(capsys) -> None:
    assert cli_main(["--dataset", "two_moons", "--name", "m", "--test-file", "x.csv"]) == 2
    assert "--test-file apply to file: data sets only" in capsys.readouterr().err


@pytest.fixture
def client(
    tmp_path: Path, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setenv("CPFLOW_QUEUE_NAME", queue_name)
    monkeypatch.setenv("CPFLOW_STORE_DIR", str(tmp_path / "store"))
    settings = Settings(
        store_dir=tmp_path / "store", redis_url="redis://127.0.0.1:6379/13", device="cpu",
        inference_threads=1, torch_threads=1,
    )  # fmt: skip
    with TestClient(create_app(settings)) as c:
        c.store_dir = tmp_path / "store"  # type: ignore[attr-defined]
        yield c


def _upload(client: TestClient, values: np.ndarray, name: str, header: list[str] = NAMES):
    files = {"file": (f"{name}.csv", _csv(values, header).encode())}
    r = client.post("/v1/datasets", files=files, data={"name": name})
    assert r.status_code in (200, 201), r.text
    return r.json()


def test_job_with_its_own_test_data_set(
    client: TestClient, redis_conn: redis.Redis, queue_name: str
) -> None:
    _upload(client, _table(100, 0), "train")
    test = _upload(client, _table(40, 1)[:, [1, 2, 0]], "test", ["v", "w", "u"])
    spec = {
        "model_name": "m", "model": TINY_MODEL, "training": SHORT_TRAINING, "plots": False,
        "dataset": {"id": "train", "test": "test", "val_fraction": 0.25},
    }  # fmt: skip
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    full = json.loads(redis_conn.hget(record_key(queue_name, job_id), "spec"))
    assert full["dataset"]["test"] == test["id"]  # the name resolved at submit time
    runtime = in_process_runtime(queue_name, {"id": job_id})
    run_with_recorder({**full, "runtime": runtime}, JobRecorder(redis_conn, runtime))
    training = ModelStore(client.store_dir).manifest("m")["training"]  # type: ignore[attr-defined]
    assert training["num_train"] == 75  # 100 less the 25% validation cut; no test cut
    assert training["split"]["test_fraction"] == 0.0 and "test" in training["split"]["test"]


def test_job_refuses_a_held_out_set_with_other_columns(client: TestClient) -> None:
    _upload(client, _table(100, 0), "train")
    _upload(client, _table(40, 1), "other", ["a", "b", "c"])
    spec = {"model_name": "m", "dataset": {"id": "train", "validation": "other"}}
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_columns"
    assert "dataset.validation" in r.json()["error"]["message"]
    missing = client.post(
        "/v1/jobs", json={"model_name": "m", "dataset": {"id": "train", "test": "nope"}}
    )
    assert missing.status_code == 422 and missing.json()["error"]["code"] == "dataset_not_found"
