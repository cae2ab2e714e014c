"""The data checks' refusals and warnings (#28) through the three doors a table comes in by:
the upload route, cpflow-train on a CSV file, and a training job. The four degenerate files
(a saved pandas index, a constant column, an exact linear relation, a missing cell) are each
refused with the same machine code naming the column, and nothing is stored for them; a file
with duplicate rows passes with a warning that reaches the data set, the job record, the
manifest and the CLI's output. Real Redis, the real app (TestClient), the trainer in process.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from model_store import ModelStore
from model_store.data_checks import column_names
from service.app import create_app
from service.queue import record_key
from service.settings import Settings
from tests.jobs.jobs_stack import SHORT_TRAINING, TINY_MODEL, in_process_runtime
from training.cli import main as cli_main
from training.datasets.arrays import load_table
from training.datasets.errors import DatasetError
from training.jobs import JobRecorder, run_with_recorder

NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def _table(n: int = 150, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 4)) * [0.8, 0.4, 1.7, 0.7]
    return x + [5.8, 3.0, 3.7, 1.2]


def _csv(values: np.ndarray, header: list[str]) -> str:
    rows = "".join(",".join(f"{v:.4f}" for v in r) + "\n" for r in values)
    return ",".join(header) + "\n" + rows


def _index_csv() -> str:  # pandas to_csv() with its index: a blank-named running count
    return _csv(np.column_stack([np.arange(150), _table()]), ["", *NAMES])


def _constant_csv() -> str:
    x = _table()
    x[:, 2] = 1.5
    return _csv(x, NAMES)


def _rank_csv() -> str:
    x = _table()
    return _csv(np.column_stack([x, x[:, 0] - x[:, 1]]), [*NAMES, "sepal_diff"])


def _missing_csv() -> str:
    lines = _csv(_table(), NAMES).splitlines()
    cells = lines[5].split(",")
    cells[1] = ""  # data row 5, sepal_width
    lines[5] = ",".join(cells)
    return "\n".join(lines) + "\n"


# (file, machine code, the column it names, what the message says about it)
REFUSED = {
    "index": (_index_csv, "index_column", "x1", "running count"),
    "constant": (_constant_csv, "constant_column", "petal_length", "is constant"),
    "rank": (_rank_csv, "linear_dependency", "sepal_diff", "linear combination"),
    "missing": (_missing_csv, "missing_values", "sepal_width", "at row(s) 5"),
}


def _duplicates_csv() -> str:
    x = _table()
    x[100:120] = x[:20]
    return _csv(x, NAMES)


@pytest.fixture
def client(
    tmp_path: Path, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setenv("CPFLOW_QUEUE_NAME", queue_name)
    monkeypatch.setenv("CPFLOW_STORE_DIR", str(tmp_path / "store"))  # the in-process worker's
    settings = Settings(
        store_dir=tmp_path / "store", redis_url="redis://127.0.0.1:6379/13", device="cpu",
        inference_threads=1, torch_threads=1,
    )  # fmt: skip
    with TestClient(create_app(settings)) as c:
        c.store_dir = tmp_path / "store"  # type: ignore[attr-defined]
        yield c


def _upload(client: TestClient, text: str, name: str, **fields: str):
    files = {"file": (f"{name}.csv", text.encode())}
    return client.post("/v1/datasets", files=files, data={"name": name, **fields})


def _stored(root: Path) -> list[str]:
    folder = root / "datasets"
    return sorted(p.name for p in folder.iterdir() if p.name != ".lock") if folder.exists() else []


def _run_job(client: TestClient, redis_conn: redis.Redis, queue_name: str, spec: dict) -> dict:
    """Submit through the API, then run the job in this process as a worker would."""
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    full = json.loads(redis_conn.hget(record_key(queue_name, job_id), "spec"))
    runtime = in_process_runtime(queue_name, {"id": job_id})
    with contextlib.suppress(DatasetError):  # a failed job re-raises, for RQ to record
        run_with_recorder({**full, "runtime": runtime}, JobRecorder(redis_conn, runtime))
    return client.get(f"/v1/jobs/{job_id}").json()


def _job(dataset: str, name: str = "m") -> dict:
    return {
        "model_name": name, "dataset": {"id": dataset}, "model": TINY_MODEL,
        "training": SHORT_TRAINING, "plots": False,
    }  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_upload_refuses_naming_the_column_and_stores_nothing(
    client: TestClient, case: str
) -> None:
    make, code, column, says = REFUSED[case]
    r = _upload(client, make(), case)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == code
    assert f"'{column}'" in error["message"] and says in error["message"]
    assert f"drop the named columns: {column}" in error["message"]  # the way out
    assert error["details"][0]["check"] == code and error["details"][0]["columns"] == [column]
    assert _stored(client.store_dir) == []  # type: ignore[attr-defined]
    assert client.get("/v1/datasets").json() == []
    # A job naming the refused upload finds nothing to train on.
    job = client.post("/v1/jobs", json=_job(case))
    assert job.status_code == 422 and job.json()["error"]["code"] == "dataset_not_found"


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_upload_with_drop_flagged_stores_the_rest(client: TestClient, case: str) -> None:
    make, _, column, _ = REFUSED[case]
    r = _upload(client, make(), case, drop_flagged="true")
    assert r.status_code == 201, r.text
    body = r.json()
    header = make().splitlines()[0].split(",")
    assert body["columns"] == [c for c in column_names(header, len(header)) if c != column]
    assert body["report"]["dropped"] == [column] and body["report"]["errors"] == []
    # drop_columns names them explicitly; an unknown name is a 422 naming it
    again = _upload(client, make(), f"{case}-2", drop_columns=column)
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    unknown = _upload(client, make(), f"{case}-3", drop_columns="nope")
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_columns"


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_cli_refuses_naming_the_column_and_publishes_nothing(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, _, column, says = REFUSED[case]
    path = tmp_path / f"{case}.csv"
    path.write_text(make())
    store = tmp_path / "store"
    args = ["--dataset", f"file:{path}", "--name", "m", "--store-dir", str(store), "--quiet"]
    assert cli_main([*args, "--iterations", "5", "--no-plots", "--no-onnx"]) == 1
    err = capsys.readouterr().err
    assert f"'{column}'" in err and says in err and "--drop-flagged" in err
    assert not (store / "m").exists()


def test_cli_drop_flagged_trains_on_the_rest(tmp_path: Path, capsys) -> None:
    path = tmp_path / "index.csv"
    path.write_text(_index_csv())
    store = tmp_path / "store"
    args = ["--dataset", f"file:{path}", "--name", "m", "--store-dir", str(store), "--quiet"]
    assert cli_main([*args, "--drop-flagged", "--iterations", "5", "--no-plots", "--no-onnx"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["columns"] == NAMES and summary["data_report"]["dropped"] == ["x1"]
    assert ModelStore(store).manifest("m")["training"]["columns"] == NAMES


@pytest.mark.parametrize("case", ["constant", "index"])
def test_job_on_a_degenerate_data_set_stored_before_the_checks_fails_naming_it(
    client: TestClient, redis_conn: redis.Redis, queue_name: str, case: str, tmp_path: Path
) -> None:
    """A data set stored without the checks (an older store) is refused by the job itself."""
    make, _, column, says = REFUSED[case]
    path = tmp_path / "t.csv"
    path.write_text(make())
    values, header = load_table(path)
    store = ModelStore(client.store_dir)  # type: ignore[attr-defined]
    store.datasets.put(values, "legacy", columns=column_names(header, values.shape[1]))
    job = _run_job(client, redis_conn, queue_name, _job("legacy"))
    assert job["status"] == "failed"
    assert f"'{column}'" in job["error"] and says in job["error"]
    assert not (client.store_dir / "m").exists()  # type: ignore[attr-defined]


def test_a_warning_reaches_data_set_job_record_manifest_and_cli(
    client: TestClient,
    redis_conn: redis.Redis,
    queue_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    r = _upload(client, _duplicates_csv(), "dups")
    assert r.status_code == 201, r.text
    warnings = r.json()["report"]["warnings"]
    assert [w["check"] for w in warnings] == ["duplicate_rows"]
    assert "20 of 150 rows repeat" in warnings[0]["message"]
    job = _run_job(client, redis_conn, queue_name, _job("dups", "dups-model"))
    assert job["status"] == "succeeded", job
    assert job["dataset"]["name"] == "dups"
    assert job["data_report"]["warnings"] == warnings
    manifest = ModelStore(client.store_dir).manifest("dups-model")  # type: ignore[attr-defined]
    assert manifest["training"]["data_report"]["warnings"] == warnings
    assert manifest["training"]["columns"] == NAMES

    path = tmp_path / "dups.csv"
    path.write_text(_duplicates_csv())
    store = tmp_path / "cli-store"
    args = ["--dataset", f"file:{path}", "--name", "m", "--store-dir", str(store), "--quiet"]
    assert cli_main([*args, "--iterations", "5", "--no-plots", "--no-onnx"]) == 0
    assert "data warning: 20 of 150 rows repeat" in capsys.readouterr().err


def test_conditional_tables_are_checked_and_keep_their_names() -> None:
    """p(x | c) data goes through the same checks; its data and context columns keep names."""
    from training.datasets.conditional import conditional_splits

    x = _table()
    splits = conditional_splits(x, [3], name="t", columns=NAMES)
    assert splits.meta["columns"] == NAMES[:3] and splits.meta["context_names"] == NAMES[3:]
    assert splits.meta["data_report"]["errors"] == []
    x[:, 3] = 2.0
    with pytest.raises(DatasetError, match="'petal_width' is constant"):
        conditional_splits(x, [3], name="t", columns=NAMES)
