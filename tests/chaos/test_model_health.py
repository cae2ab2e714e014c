"""The catalogue shows broken versions instead of hiding them, and a replica re-verifies the
weights it has loaded (on demand and on a schedule): once damaged, it refuses the version as
a fresh replica does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model_store import ModelStore
from service.app import create_app
from service.settings import Settings
from tests.helpers.flows import make_flow

ROW = {"inputs": [[1.0, 2.0]]}


def _damage_weights(store_dir: Path, name: str) -> None:
    weights = store_dir / name / "1" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = b"\x00" * 8
    weights.write_bytes(bytes(data))


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    store = ModelStore(root)
    for name, seed in (("good", 0), ("victim", 1), ("nomanifest", 2)):
        store.publish(name, make_flow(2, seed=seed))
    (root / "nomanifest" / "1" / "manifest.json").unlink()
    return root


def _client(store_dir: Path, **extra: object) -> TestClient:
    settings = Settings(
        store_dir=store_dir, device="cpu", inference_threads=1, torch_threads=1, **extra
    )
    return TestClient(create_app(settings))


@pytest.fixture
def client(store_dir: Path) -> Iterator[TestClient]:
    with _client(store_dir, verify_interval_s=0) as c:
        yield c


def test_listing_shows_a_model_whose_manifest_is_missing(client: TestClient) -> None:
    listing = client.get("/v1/models").json()
    rows = {m["name"]: m for m in listing["models"]}
    assert set(rows) == {"good", "victim", "nomanifest"}
    assert listing["count"] == client.get("/readyz").json()["store"]["models"] == 3
    assert rows["good"]["state"] == "ready" and rows["good"]["dim"] == 2
    broken = rows["nomanifest"]
    assert broken["state"] == "broken" and broken["version"] == 1
    assert "manifest.json" in broken["error"]


def test_verify_on_demand_unloads_damaged_weights(client: TestClient, store_dir: Path) -> None:
    assert client.post("/v1/models/victim/log_prob", json=ROW).status_code == 200
    checked = client.post("/v1/models/victim/verify").json()
    assert checked["versions"] == [{"version": 1, "state": "ready", "loaded": True, "error": None}]
    _damage_weights(store_dir, "victim")
    # Loaded before the damage: still served until someone checks.
    assert client.post("/v1/models/victim/log_prob", json=ROW).status_code == 200
    checked = client.post("/v1/models/victim/verify").json()
    (version,) = checked["versions"]
    assert version["state"] == "broken" and version["loaded"] is False
    assert "weights.safetensors" in version["error"]
    r = client.post("/v1/models/victim/log_prob", json=ROW)
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_corrupt"
    with _client(store_dir, verify_interval_s=0) as fresh:  # what a fresh replica says
        r = fresh.post("/v1/models/victim/log_prob", json=ROW)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_corrupt"
    assert client.post("/v1/models/good/log_prob", json=ROW).status_code == 200
    assert client.post("/v1/models/nope/verify").status_code == 404


def test_periodic_check_unloads_damaged_weights(store_dir: Path) -> None:
    with _client(store_dir, verify_interval_s=0.2) as client:
        assert client.post("/v1/models/victim/log_prob", json=ROW).status_code == 200
        _damage_weights(store_dir, "victim")
        deadline = time.monotonic() + 20
        status = 200
        while status == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            status = client.post("/v1/models/victim/log_prob", json=ROW).status_code
        assert status == 503
        assert 'cpflow_model_verifications_total{outcome="corrupt"}' in client.get("/metrics").text
