"""Data-set and job routes in process (real Redis, no worker): validation at the door.

Every refused upload must leave the store's datasets area empty; every bad job spec must be
a 422 at submit time and leave no job behind.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

UPLOAD_CAP = 64 * 1024


@pytest.fixture
def client(
    tmp_path: Path, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setenv("CPFLOW_QUEUE_NAME", queue_name)
    settings = Settings(
        store_dir=tmp_path / "store",
        redis_url="redis://127.0.0.1:6379/13",
        device="cpu",
        max_upload_bytes=UPLOAD_CAP,
        inference_threads=1,
        torch_threads=1,
    )
    with TestClient(create_app(settings)) as c:
        c.store_dir = tmp_path / "store"
        yield c


def _csv(array: np.ndarray, header: str = "a,b") -> bytes:
    return (header + "\n" + "\n".join(",".join(map(str, r)) for r in array)).encode()


def _upload(client: TestClient, content: bytes, filename: str = "d.csv", name: str = "demo"):
    return client.post("/v1/datasets", files={"file": (filename, content)}, data={"name": name})


def _stored(client: TestClient) -> list[str]:
    root = client.store_dir / "datasets"
    # Everything but the store's lock file: data sets, and any leftover temp folders.
    return sorted(p.name for p in root.iterdir() if p.name != ".lock") if root.exists() else []


def _data(n: int = 40, d: int = 2) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, d)).round(6)


def test_upload_csv_and_npy_same_content_is_one_dataset(client: TestClient) -> None:
    x = _data()
    first = _upload(client, _csv(x))
    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["rows"], body["dim"], body["name"]) == (40, 2, "demo")
    assert body["id"] == body["sha256"] and len(body["id"]) == 64
    assert first.headers["location"] == f"/v1/datasets/{body['id']}"
    # The same numbers as .npy (float32 in the store) are the same data set: 200, same id.
    buf = io.BytesIO()
    np.save(buf, x.astype(np.float32))
    again = _upload(client, buf.getvalue(), filename="d.npy", name="other label")
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    assert [d["id"] for d in client.get("/v1/datasets").json()] == [body["id"]]
    assert client.get(f"/v1/datasets/{body['id']}").json()["rows"] == 40
    assert len(_stored(client)) == 1


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"a,b\n1,2\n3,hello\n" + b"4,5\n" * 20, 422, "invalid_dataset"),  # text
        (b"1,2\n" * 20 + b"nan,1\n", 422, "missing_values"),  # NaN: named by the data checks
        (b"1,2\n" * 20 + b"1,2,3\n", 422, "invalid_dataset"),  # ragged
        (b"a,b\n1,2\n", 422, "invalid_dataset"),  # a single row
        (b"1.5,2.5\n" * (UPLOAD_CAP // 8 + 1), 413, "payload_too_large"),  # over the cap
    ],
    ids=["text", "nan", "ragged", "single-row", "oversized"],
)
def test_bad_uploads_are_4xx_and_store_nothing(
    client: TestClient, content: bytes, status: int, code: str
) -> None:
    r = _upload(client, content)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["message"]
    assert client.get("/v1/datasets").json() == []
    assert _stored(client) == []


def test_upload_needs_multipart_with_a_file(client: TestClient) -> None:
    r = client.post("/v1/datasets", json={"rows": [[1, 2]]})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = client.post("/v1/datasets", data={"name": "x"}, files={"other": ("a.csv", b"1")})
    assert r.status_code == 422 and "file" in r.json()["error"]["message"]
    assert _stored(client) == []


def test_unknown_dataset_is_404(client: TestClient) -> None:
    assert client.get("/v1/datasets/" + "0" * 64).status_code == 404
    assert client.delete("/v1/datasets/" + "0" * 64).json()["error"]["code"] == "dataset_not_found"


def _spec(dataset: dict, **kw) -> dict:
    return {"model_name": "m", "dataset": dataset, **kw}


def test_bad_job_specs_are_422_and_create_no_job(client: TestClient) -> None:
    ds = _upload(client, _csv(_data())).json()["id"]
    cases = {
        "missing data set": (_spec({"id": "f" * 64}), "dataset_not_found"),
        "wrong dimension": (_spec({"id": ds}, model={"dim": 3}), "dimension_mismatch"),
        "negative lr": (_spec({"id": ds}, training={"lr": -0.1}), "validation_error"),
        "zero iterations": (_spec({"id": ds}, training={"iterations": 0}), "validation_error"),
        "unknown builtin": (_spec({"builtin": "nope"}), "validation_error"),
        "unknown field": (_spec({"id": ds}, training={"learning_rate": 1}), "validation_error"),
        "bad model name": ({"model_name": "../x", "dataset": {"id": ds}}, "validation_error"),
        "bad activation": (_spec({"id": ds}, model={"activation": "relu"}), "validation_error"),
    }
    for what, (body, code) in cases.items():
        r = client.post("/v1/jobs", json=body)
        assert r.status_code == 422, (what, r.text)
        assert r.json()["error"]["code"] == code, (what, r.json())
    assert client.get("/v1/jobs").json() == []


def test_builtin_dimension_is_checked_too(client: TestClient) -> None:
    r = client.post("/v1/jobs", json=_spec({"builtin": "two_moons"}, model={"dim": 5}))
    assert r.status_code == 422 and r.json()["error"]["code"] == "dimension_mismatch"
    r = client.post("/v1/jobs", json=_spec({"builtin": "two_moons"}, model={"dim": 2}))
    assert r.status_code == 202


def test_job_routes_submit_list_get_cancel(client: TestClient) -> None:
    ds = _upload(client, _csv(_data())).json()["id"]
    r = client.post("/v1/jobs", json=_spec({"id": ds}, training={"iterations": 5}))
    assert r.status_code == 202 and r.json()["status"] == "queued"
    job_id = r.json()["id"]
    assert r.headers["location"] == f"/v1/jobs/{job_id}"
    job = client.get(f"/v1/jobs/{job_id}").json()
    # The record names the data set as the jobs list shows it, and carries its data report.
    assert job["status"] == "queued" and job["dataset"] == {"id": ds, "name": "demo"}
    assert job["data_report"]["errors"] == [] and job["data_report"]["columns"] == ["a", "b"]
    # A queued or running job pins its data set.
    r = client.delete(f"/v1/datasets/{ds}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "dataset_in_use"
    assert job_id in r.json()["error"]["message"]
    r = client.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = client.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_finished"
    assert [j["id"] for j in client.get("/v1/jobs?status=cancelled").json()] == [job_id]
    assert client.get("/v1/jobs?status=running").json() == []
    assert client.get("/v1/jobs?status=bogus").status_code == 422
    assert client.get("/v1/jobs/nope").json()["error"]["code"] == "job_not_found"
    # Once no job uses it, the data set can go.
    assert client.delete(f"/v1/datasets/{ds}").status_code == 204
    assert client.get("/v1/datasets").json() == []


def test_events_stream_ends_with_the_final_state(client: TestClient) -> None:
    ds = _upload(client, _csv(_data())).json()["id"]
    job_id = client.post("/v1/jobs", json=_spec({"id": ds})).json()["id"]
    client.delete(f"/v1/jobs/{job_id}")
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    assert text.startswith("event: job\ndata: ")
    assert '"status": "cancelled"' in text


def test_redis_unreachable_gives_503_on_job_routes_only(
    tmp_path: Path, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers.ports import free_port

    monkeypatch.setenv("CPFLOW_QUEUE_NAME", queue_name)
    settings = Settings(
        store_dir=tmp_path / "store", redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    with TestClient(create_app(settings)) as c:
        ds = _upload(c, _csv(_data()))
        assert ds.status_code == 201  # uploads and listing need only the store
        assert c.get("/v1/datasets").status_code == 200
        for method, path, body in [
            ("GET", "/v1/jobs", None),
            ("GET", "/v1/jobs/abc", None),
            ("DELETE", "/v1/jobs/abc", None),
            ("POST", "/v1/jobs", _spec({"id": ds.json()["id"]})),
            ("DELETE", f"/v1/datasets/{ds.json()['id']}", None),  # cannot tell if in use
        ]:
            r = c.request(method, path, json=body)
            assert r.status_code == 503, (method, path, r.text)
            assert r.json()["error"]["code"] == "queue_unavailable"
            assert r.headers["retry-after"] == "5"


def test_job_and_dataset_routes_need_the_api_key_when_configured(
    tmp_path: Path, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CPFLOW_QUEUE_NAME", queue_name)
    settings = Settings(
        store_dir=tmp_path / "store", redis_url="redis://127.0.0.1:6379/13", api_keys=("s3cret",)
    )
    with TestClient(create_app(settings)) as c:
        for method, path in [
            ("GET", "/v1/jobs"),
            ("POST", "/v1/jobs"),
            ("GET", "/v1/jobs/x"),
            ("DELETE", "/v1/jobs/x"),
            ("GET", "/v1/datasets"),
            ("POST", "/v1/datasets"),
        ]:
            r = c.request(method, path)
            assert r.status_code == 401, (method, path)
            assert r.json()["error"]["code"] == "unauthorized"
        auth = {"Authorization": "Bearer s3cret"}
        assert c.get("/v1/jobs", headers=auth).json() == []
        r = c.post("/v1/datasets", headers=auth, files={"file": ("d.csv", _csv(_data()))})
        assert r.status_code == 201 and r.json()["name"] == "d"  # label defaults to file stem


def test_data_sets_by_name_and_a_reupload_keeps_its_new_name(client: TestClient) -> None:
    """#28: data sets were known only by their 64-hex id, and uploading the same file under a
    new name silently kept the old one."""
    x = _data()
    first = _upload(client, _csv(x, "u,v"), name="iris").json()
    assert first["columns"] == ["u", "v"] and first["names"] == ["iris"]
    again = _upload(client, _csv(x, "u,v"), name="iris-v2")
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    assert (again.json()["name"], again.json()["names"]) == ("iris-v2", ["iris", "iris-v2"])
    assert client.get("/v1/datasets").json()[0]["name"] == "iris-v2"
    for ref in ("iris", "iris-v2", first["id"]):
        assert client.get(f"/v1/datasets/{ref}").json()["id"] == first["id"]
    # The latest upload under a name wins: other numbers under "iris" take it over.
    other = _upload(client, _csv(_data(n=30), "u,v"), name="iris").json()
    assert client.get("/v1/datasets/iris").json()["id"] == other["id"]
    assert client.get("/v1/datasets/nope").json()["error"]["code"] == "dataset_not_found"
    assert client.delete("/v1/datasets/iris-v2").status_code == 204
    assert [d["id"] for d in client.get("/v1/datasets").json()] == [other["id"]]


def test_a_job_gives_iterations_or_a_time_budget_and_the_budget_fits_its_timeout(
    client: TestClient,
) -> None:
    cases = {
        "both": ({"iterations": 50, "time_budget_s": 30}, "not both"),
        "neither": ({"iterations": None}, "training.iterations or training.time_budget_s"),
        "zero budget": ({"time_budget_s": 0}, "greater than 0"),
    }
    for what, (training, says) in cases.items():
        r = client.post("/v1/jobs", json=_spec({"builtin": "two_moons"}, training=training))
        assert r.status_code == 422, (what, r.text)
        error = r.json()["error"]
        assert error["code"] == "validation_error" and says in error["message"], (what, error)
    late = _spec({"builtin": "two_moons"}, training={"time_budget_s": 60}, timeout_s=60)
    r = client.post("/v1/jobs", json=late)
    assert r.status_code == 422 and "below timeout_s" in r.json()["error"]["message"]
    r = client.post(
        "/v1/jobs", json=_spec({"builtin": "two_moons"}, training={"time_budget_s": 30})
    )
    assert r.status_code == 202
    r = client.post("/v1/jobs", json=_spec({"builtin": "two_moons"}))
    assert r.status_code == 202  # no budget named: 2,000 iterations, as before
