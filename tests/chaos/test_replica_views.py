"""Replicas compare their views of the store (two app instances sharing one Redis db): each
publishes its loaded versions with their weights' sha256, and a replica serving a version with
other weights than another replica says so in /readyz and in
cpflow_replica_view_disagreements; replicas that agree report nothing; a replica that stops
withdraws its view."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model_store import ModelStore
from service.app import create_app
from service.replica_views import compare_views
from service.settings import Settings
from tests.helpers.flows import make_flow
from tests.helpers.procs import REDIS_URL

ROW = {"inputs": [[0.5, -0.25]]}


@pytest.fixture(autouse=True)
def _own_namespace(queue_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Views live under cpflow:<queue>:replicas:, deleted with the test's queue."""
    monkeypatch.setenv("CPFLOW_QUEUE_NAME", queue_name)


def _app(store_dir: Path) -> TestClient:
    settings = Settings(
        store_dir=store_dir, redis_url=REDIS_URL, device="cpu", inference_threads=1,
        torch_threads=1, verify_interval_s=0, replica_view_s=60,
    )  # fmt: skip
    return TestClient(create_app(settings))


def _gauge(client: TestClient) -> float:
    text = client.get("/metrics").text
    found = re.search(r"^cpflow_replica_view_disagreements (\S+)$", text, re.MULTILINE)
    assert found, text
    return float(found.group(1))


def _stores(tmp_path: Path) -> tuple[Path, Path]:
    """Two stores holding the same 'same' and a different 'm' version 1 (restored from
    another backup, say)."""
    roots = (tmp_path / "one", tmp_path / "two")
    ModelStore(roots[0]).publish("same", make_flow(2, seed=7))
    shutil.copytree(roots[0] / "same", roots[1] / "same")  # the very same files
    for seed, root in enumerate(roots):
        ModelStore(root).publish("m", make_flow(2, seed=seed))
    return roots


def test_replicas_serving_different_weights_report_it(tmp_path: Path) -> None:
    first, second = _stores(tmp_path)
    with _app(first) as one, _app(second) as two:
        for client in (one, two):
            for name in ("same", "m"):
                assert client.post(f"/v1/models/{name}/log_prob", json=ROW).status_code == 200
        reports = [c.get("/readyz") for c in (two, one)]  # two publishes first, then one
        for ready in reports:
            assert ready.status_code == 200, ready.text  # reported, not a reason for 503
        seen = reports[1].json()["replicas"]
        assert seen["ok"] and seen["replicas"] == 1
        (row,) = seen["disagreements"]
        digest = ModelStore(first).manifest("m", 1)["files"]["weights.safetensors"]
        other = ModelStore(second).manifest("m", 1)["files"]["weights.safetensors"]
        assert row["model"] == "m" and row["version"] == 1 and row["weights_sha256"] == digest
        assert list(row["replicas"].values()) == [other]
        assert _gauge(one) == 1.0
        assert two.get("/readyz").json()["replicas"]["disagreements"][0]["weights_sha256"] == other
    with _app(first) as alone:  # the others withdrew their views when they stopped
        assert alone.get("/readyz").json()["replicas"]["replicas"] == 0


def test_replicas_that_agree_report_nothing(tmp_path: Path) -> None:
    first, _ = _stores(tmp_path)
    with _app(first) as one, _app(first) as two:
        for client in (one, two):
            assert client.post("/v1/models/m/log_prob", json=ROW).status_code == 200
        two.get("/readyz")
        seen = one.get("/readyz").json()["replicas"]
        assert seen == {"ok": True, "replicas": 1, "disagreements": [], "error": None}
        assert _gauge(one) == 0.0


def test_an_unreachable_redis_is_reported_not_fatal(tmp_path: Path) -> None:
    settings = Settings(store_dir=tmp_path / "s", redis_url="redis://127.0.0.1:1/0",
                        device="cpu", replica_view_s=60)  # fmt: skip
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["replicas"]["ok"] is False and ready.json()["replicas"]["error"]


def test_compare_views_lists_only_versions_served_by_both_with_other_weights() -> None:
    mine = {"a@1": "x", "b@2": "y", "c@3": "z"}
    others = {"r2": {"a@1": "x", "b@2": "Y"}, "r3": {"b@2": "y", "c@3": "Z", "d@4": "w"}}
    assert compare_views(mine, others) == [
        {"model": "b", "version": 2, "weights_sha256": "y", "replicas": {"r2": "Y"}},
        {"model": "c", "version": 3, "weights_sha256": "z", "replicas": {"r3": "Z"}},
    ]
