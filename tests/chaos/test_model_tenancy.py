"""Models per tenant (CPFLOW_MODEL_SCOPE=tenant) and model deletion by admins, through the real
app with several tenants' keys and real Redis: a model a tenant's training job publishes is that
tenant's (another tenant gets the very 404 a missing model gets, on every route, and does not
see it listed), models published outside a tenant stay shared, a name has one owner; deleting
needs the admin role, is audited, moves "latest" correctly and leaves other models alone."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from rq.job import Job
from rq.serializers import JSONSerializer

from model_store import ModelNameTaken, ModelStore
from service.app import create_app
from service.settings import Settings
from tests.helpers.flows import make_flow
from tests.helpers.procs import REDIS_URL
from tests.jobs.jobs_stack import TINY_MODEL
from training.jobs import execute_spec

KEYS = {
    "a": ("key-of-team-a", "team-a", ["read", "train"]),
    "b": ("key-of-team-b", "team-b", ["read", "train"]),
    "admin-a": ("admin-of-team-a", "team-a", ["read", "train", "admin"]),
    "admin-b": ("admin-of-team-b", "team-b", ["read", "admin"]),
}
ROW = {"inputs": [[0.5, -0.25]]}


def _auth(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[who][0]}"}


def _settings(store_dir: Path, scope: str, **extra: Any) -> Settings:
    hashes = {
        hashlib.sha256(key.encode()).hexdigest(): {"tenant": tenant, "roles": roles}
        for key, tenant, roles in KEYS.values()
    }
    return Settings(
        store_dir=store_dir, redis_url=REDIS_URL, device="cpu", inference_threads=1,
        torch_threads=1, verify_interval_s=0, api_key_hashes=hashes, model_scope=scope,
        **extra,
    )  # fmt: skip


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    ModelStore(root).publish("shared", make_flow(2, seed=0))  # as cpflow-train does
    return root


@pytest.fixture
def client(
    store_dir: Path, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setenv("CPFLOW_QUEUE_NAME", queue_name)
    monkeypatch.setenv("CPFLOW_STORE_DIR", str(store_dir))
    with TestClient(create_app(_settings(store_dir, "tenant"))) as c:
        yield c


def _train(client: TestClient, who: str, name: str, redis_conn: redis.Redis) -> dict:
    """Submit a job through the API and run what the worker would run, in this process."""
    spec = {
        "model_name": name,
        "dataset": {"builtin": "two_moons", "num_samples": 200, "seed": 0},
        "model": TINY_MODEL,
        "training": {"iterations": 5, "batch_size": 32, "val_every": 5},
        "plots": False,
    }
    r = client.post("/v1/jobs", json=spec, headers=_auth(who))
    assert r.status_code == 202, r.text
    job = Job.fetch(r.json()["id"], connection=redis_conn, serializer=JSONSerializer)
    return execute_spec(job.kwargs["spec"])


def _error(response: Any, name: str = "") -> tuple[int, str]:
    """Status and error body (/v1's envelope or /v2's message), ``name`` written as a-model."""
    text = str(response.json()["error"])
    return response.status_code, text.replace(name, "a-model") if name else text


def test_a_tenants_model_is_invisible_to_other_tenants(
    client: TestClient, store_dir: Path, redis_conn: redis.Redis
) -> None:
    assert _train(client, "a", "a-model", redis_conn)["version"] == 1
    assert ModelStore(store_dir).manifest("a-model")["tenant"] == "team-a"
    listed = {m["name"]: m["tenant"] for m in client.get("/v1/models", headers=_auth("a")).json()["models"]}  # fmt: skip
    assert listed == {"a-model": "team-a", "shared": None}
    listed_b = client.get("/v1/models", headers=_auth("b")).json()["models"]
    assert [m["name"] for m in listed_b] == ["shared"]
    for path, body in [
        ("/v1/models/{}", None), ("/v1/models/{}/versions/1", None),
        ("/v1/models/{}/log_prob", ROW), ("/v1/models/{}/versions/1/log_prob", ROW),
        ("/v1/models/{}/verify", {}), ("/v2/models/{}", None), ("/v2/models/{}/ready", None),
        ("/v1/models/{}/plots/density.png", None),
    ]:  # fmt: skip
        method = "GET" if body is None else "POST"
        mine = client.request(method, path.format("a-model"), json=body, headers=_auth("a"))
        assert mine.status_code in (200, 404), (path, mine.text)  # 404: the job made no plots
        theirs = client.request(method, path.format("a-model"), json=body, headers=_auth("b"))
        missing = client.request(method, path.format("no-such"), json=body, headers=_auth("b"))
        assert theirs.status_code == 404, (path, theirs.text)
        # No hint: the same answer as for a model that does not exist, name aside.
        assert _error(theirs) == _error(missing, "no-such"), path
    for who in ("a", "b"):  # the shared model answers everyone
        assert client.post("/v1/models/shared/log_prob", json=ROW, headers=_auth(who)).status_code == 200  # fmt: skip
    assert client.post("/v1/models/a-model/log_prob", json=ROW, headers=_auth("a")).status_code == 200  # fmt: skip


def test_a_name_has_one_owner(
    client: TestClient, store_dir: Path, redis_conn: redis.Redis
) -> None:
    _train(client, "a", "a-model", redis_conn)
    spec = {"model_name": "a-model", "dataset": {"builtin": "two_moons"}, "model": TINY_MODEL}
    for who, name in (("b", "a-model"), ("b", "shared"), ("a", "shared")):
        r = client.post("/v1/jobs", json={**spec, "model_name": name}, headers=_auth(who))
        assert r.status_code == 409 and r.json()["error"]["code"] == "model_name_taken", r.text
    assert _train(client, "a", "a-model", redis_conn)["version"] == 2  # its own name: fine
    with pytest.raises(ModelNameTaken):  # cpflow-train cannot publish into a tenant's name
        ModelStore(store_dir).publish("a-model", make_flow(2, seed=3))
    # A publish racing past the submission check is refused by the store itself.
    with pytest.raises(ModelNameTaken):
        ModelStore(store_dir).publish("a-model", make_flow(2, seed=3), tenant="team-b")


def test_shared_scope_shows_every_model(store_dir: Path) -> None:
    ModelStore(store_dir).publish("a-model", make_flow(2, seed=1), tenant="team-a")
    with TestClient(create_app(_settings(store_dir, "shared"))) as c:
        names = [m["name"] for m in c.get("/v1/models", headers=_auth("b")).json()["models"]]
        assert names == ["a-model", "shared"]
        assert c.post("/v1/models/a-model/log_prob", json=ROW, headers=_auth("b")).status_code == 200  # fmt: skip


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_deleting_models_needs_admin_and_moves_latest(client: TestClient, store_dir: Path) -> None:
    store = ModelStore(store_dir)
    for seed in (1, 2, 3):
        store.publish("gone", make_flow(2, seed=seed))
    other = store.manifest("shared", 1)
    assert client.post("/v1/models/gone/versions/3/log_prob", json=ROW, headers=_auth("a")).status_code == 200  # fmt: skip
    seen = _Records()
    logging.getLogger("cpflow.audit").addHandler(seen)
    try:
        for path in ("/v1/models/gone/versions/3", "/v1/models/gone"):
            r = client.delete(path, headers=_auth("a"))  # read + train: not enough
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
        r = client.delete("/v1/models/gone/versions/3", headers=_auth("admin-a"))
    finally:
        logging.getLogger("cpflow.audit").removeHandler(seen)
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "gone", "deleted": [3], "latest_version": 2}
    audit = [(x.tenant, x.method, x.path, x.status) for x in seen.records]  # type: ignore[attr-defined]
    assert audit[-1] == ("team-a", "DELETE", "/v1/models/gone/versions/3", 200)
    assert [a[3] for a in audit] == [403, 403, 200]
    # This replica forgot the loaded version at once, and latest is 2 now.
    assert not client.app.state.engine.is_loaded("gone", 3)  # type: ignore[attr-defined]
    pinned = client.post("/v1/models/gone/versions/3/log_prob", json=ROW, headers=_auth("a"))
    assert pinned.status_code == 404 and pinned.json()["error"]["code"] == "model_not_found"
    latest = client.post("/v1/models/gone/log_prob", json=ROW, headers=_auth("a"))
    assert latest.status_code == 200 and latest.json()["version"] == 2
    assert store.publish("gone", make_flow(2, seed=4)).version == 4  # numbers are not reused
    r = client.delete("/v1/models/gone", headers=_auth("admin-a"))
    assert r.json() == {"name": "gone", "deleted": [1, 2, 4], "latest_version": None}
    assert client.get("/v1/models/gone", headers=_auth("a")).status_code == 404
    assert client.delete("/v1/models/gone", headers=_auth("admin-a")).status_code == 404
    assert store.manifest("shared", 1) == other  # other models untouched
    assert [m["name"] for m in client.get("/v1/models", headers=_auth("a")).json()["models"]] == ["shared"]  # fmt: skip


def test_an_admin_cannot_delete_another_tenants_model(client: TestClient, store_dir: Path) -> None:
    ModelStore(store_dir).publish("a-model", make_flow(2, seed=1), tenant="team-a")
    r = client.delete("/v1/models/a-model", headers=_auth("admin-b"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert ModelStore(store_dir).versions("a-model") == [1]


def test_other_replicas_forget_a_deleted_version(store_dir: Path) -> None:
    ModelStore(store_dir).publish("shared", make_flow(2, seed=5))  # version 2
    settings = _settings(store_dir, "tenant", poll_interval_s=0.0)
    with TestClient(create_app(settings)) as one, TestClient(create_app(settings)) as two:
        path = "/v1/models/shared/versions/2/log_prob"
        assert two.post(path, json=ROW, headers=_auth("b")).status_code == 200
        assert one.delete("/v1/models/shared/versions/2", headers=_auth("admin-b")).status_code == 200  # fmt: skip
        r = two.post(path, json=ROW, headers=_auth("b"))  # loaded there, gone from the store
        assert r.status_code == 404, r.text
        assert not two.app.state.engine.is_loaded("shared", 2)  # type: ignore[attr-defined]
        assert two.post("/v1/models/shared/log_prob", json=ROW, headers=_auth("b")).json()["version"] == 1  # fmt: skip


def test_cpflow_train_refuses_a_tenants_name_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.cli import main

    ModelStore(tmp_path).publish("owned", make_flow(2, seed=1), tenant="team-a")
    args = ["--dataset", "wishart_gaussian:2", "--name", "owned", "--iterations", "2",
            "--blocks", "1", "--hidden", "4", "--depth", "1", "--num-samples", "300",
            "--store-dir", str(tmp_path), "--no-plots", "--quiet"]  # fmt: skip
    assert main(args) == 1
    assert "the model name 'owned' is taken" in capsys.readouterr().err
    assert ModelStore(tmp_path).versions("owned") == [1]
