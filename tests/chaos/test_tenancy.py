"""API keys are tenants with roles (real Redis, the app in process): another tenant's job and
data set look missing (404) and cannot be cancelled or deleted; a read-only key may score and
read but gets 403 on submitting, cancelling and deleting; plain CPFLOW_API_KEYS keys keep
working as one default tenant with every role; mutating calls are audited."""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.helpers.procs import REDIS_URL

KEYS = {"a": "key-of-team-a", "a2": "second-key-of-team-a", "b": "key-of-team-b", "ro": "ro-a"}


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _auth(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[who]}"}


@pytest.fixture
def client(
    tmp_path: Path, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setenv("CPFLOW_QUEUE_NAME", queue_name)
    train = {"roles": ["read", "train"]}
    settings = Settings(
        store_dir=tmp_path / "store",
        redis_url=REDIS_URL,
        device="cpu",
        inference_threads=1,
        torch_threads=1,
        api_keys="legacy-plain-key",
        api_key_hashes={
            _sha(KEYS["a"]): {"tenant": "team-a", **train},
            _sha(KEYS["a2"]): {"tenant": "team-a", **train},
            _sha(KEYS["b"]): {"tenant": "team-b", **train},
            _sha(KEYS["ro"]): {"tenant": "team-a", "roles": ["read"]},
        },
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _upload(client: TestClient, who: str, seed: int = 1) -> str:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(seed).normal(size=(40, 2)))
    r = client.post("/v1/datasets", files={"file": ("d.npy", buf.getvalue())}, headers=_auth(who))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _submit(client: TestClient, who: str, dataset_id: str) -> str:
    spec = {"model_name": "m", "dataset": {"id": dataset_id}, "training": {"iterations": 10}}
    r = client.post("/v1/jobs", json=spec, headers=_auth(who))
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_another_tenant_gets_404_on_jobs_and_data_sets(client: TestClient) -> None:
    dataset = _upload(client, "a")
    job = _submit(client, "a", dataset)
    for path in (f"/v1/jobs/{job}", f"/v1/datasets/{dataset}"):
        r = client.get(path, headers=_auth("b"))
        assert r.status_code == 404, (path, r.text)
        assert client.get(path, headers=_auth("a2")).status_code == 200  # same tenant, new key
    assert client.delete(f"/v1/jobs/{job}", headers=_auth("b")).status_code == 404
    assert client.delete(f"/v1/datasets/{dataset}", headers=_auth("b")).status_code == 404
    assert [j["id"] for j in client.get("/v1/jobs", headers=_auth("b")).json()] == []
    assert client.get("/v1/datasets", headers=_auth("b")).json() == []
    # B cannot train on A's data set either, and it is still A's: A's job is still queued.
    spec = {"model_name": "m", "dataset": {"id": dataset}, "training": {"iterations": 10}}
    r = client.post("/v1/jobs", json=spec, headers=_auth("b"))
    assert r.status_code == 422 and r.json()["error"]["code"] == "dataset_not_found"
    assert client.get(f"/v1/jobs/{job}", headers=_auth("a")).json()["status"] == "queued"
    assert [j["id"] for j in client.get("/v1/jobs", headers=_auth("a")).json()] == [job]
    assert client.delete(f"/v1/jobs/{job}", headers=_auth("a")).json()["status"] == "cancelled"


def test_a_read_only_key_gets_403_on_changes(client: TestClient) -> None:
    dataset = _upload(client, "a")
    job = _submit(client, "a", dataset)
    spec = {"model_name": "m", "dataset": {"id": dataset}, "training": {"iterations": 10}}
    calls = [
        ("POST", "/v1/jobs", {"json": spec}),
        ("DELETE", f"/v1/jobs/{job}", {}),
        ("DELETE", f"/v1/datasets/{dataset}", {}),
        ("POST", "/v1/datasets", {"files": {"file": ("d.csv", b"1,2\n3,4\n")}}),
    ]
    for method, path, kwargs in calls:
        r = client.request(method, path, headers=_auth("ro"), **kwargs)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["error"]["code"] == "forbidden"
    # It reads its tenant's job and data set.
    assert client.get(f"/v1/jobs/{job}", headers=_auth("ro")).status_code == 200
    assert client.get(f"/v1/datasets/{dataset}", headers=_auth("ro")).status_code == 200
    assert client.get(f"/v1/jobs/{job}", headers=_auth("a")).json()["status"] == "queued"


def test_plain_keys_are_the_default_tenant_with_every_role(client: TestClient) -> None:
    plain = {"Authorization": "Bearer legacy-plain-key"}
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(3).normal(size=(40, 2)))
    r = client.post("/v1/datasets", files={"file": ("d.npy", buf.getvalue())}, headers=plain)
    assert r.status_code == 201
    assert client.get(f"/v1/datasets/{r.json()['id']}", headers=_auth("a")).status_code == 404
    assert client.delete(f"/v1/datasets/{r.json()['id']}", headers=plain).status_code == 204
    assert client.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_each_change_writes_one_audit_line(client: TestClient) -> None:
    seen = _Records()
    logging.getLogger("cpflow.audit").addHandler(seen)
    try:
        dataset = _upload(client, "a")
        client.delete(f"/v1/datasets/{dataset}", headers=_auth("ro"))
        client.get("/v1/datasets", headers=_auth("a"))  # a read: not audited
    finally:
        logging.getLogger("cpflow.audit").removeHandler(seen)
    lines = [(r.tenant, r.method, r.path, r.status) for r in seen.records]  # type: ignore[attr-defined]
    assert lines == [
        ("team-a", "POST", "/v1/datasets", 201),
        ("team-a", "DELETE", f"/v1/datasets/{dataset}", 403),
    ]
