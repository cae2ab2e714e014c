"""A model load has a deadline: a store read that never returns (the weights file replaced by
a FIFO, as a hung network mount behaves) answers 503 model_load_timeout with Retry-After
within CPFLOW_LOAD_TIMEOUT_S, /readyz says the replica is stalled, and once the file is fixed
the same replica serves the model again without a restart."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fastapi.testclient import TestClient

from model_store import ModelStore
from service.app import create_app
from service.settings import Settings
from tests.helpers.flows import make_flow

DEADLINE_S = 2.0
ROW = {"inputs": [[1.0, 2.0]]}


def _unblock(fifo: Path) -> None:
    """Let the abandoned reader of ``fifo`` finish (it reads an empty file and fails)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # no reader left
        pass


def test_a_stalled_weights_read_gets_503_then_recovers_without_restart(tmp_path: Path) -> None:
    root = tmp_path / "store"
    ModelStore(root).publish("stuck", make_flow(2, seed=3))
    weights = root / "stuck" / "1" / "weights.safetensors"
    kept, stalled = tmp_path / "weights.kept", tmp_path / "stalled.fifo"  # outside the store
    weights.rename(kept)
    os.mkfifo(weights)  # opening it for reading blocks until a writer comes: never
    settings = Settings(
        store_dir=root, device="cpu", runtime="torch", load_timeout_s=DEADLINE_S,
        inference_threads=1, torch_threads=1,
    )  # fmt: skip
    try:
        with TestClient(create_app(settings)) as client:
            start = time.monotonic()
            r = client.post("/v1/models/stuck/log_prob", json=ROW)
            waited = time.monotonic() - start
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "model_load_timeout"
            assert int(r.headers["Retry-After"]) >= 1
            assert DEADLINE_S <= waited < DEADLINE_S + 10  # bounded by the deadline
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["stalled_loads"] == ["stuck@1"]
            assert client.get("/healthz").status_code == 200  # the loop itself is free

            weights.rename(stalled)  # the store is fixed: the real file is back in place
            kept.rename(weights)
            r = client.post("/v1/models/stuck/log_prob", json=ROW)
            assert r.status_code == 200, r.text
            assert len(r.json()["log_prob"]) == 1
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["stalled_loads"] == []
            loads = client.get("/metrics").text
            assert 'cpflow_model_loads_total{outcome="timeout"} 1.0' in loads
    finally:
        _unblock(stalled if stalled.exists() else weights)
