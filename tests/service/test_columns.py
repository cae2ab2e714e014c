"""Column names (#28): a model trained on a table with a header answers in its names: the
model's description, samples (JSON and sample.csv), transport, the scored CSV, and rows sent
as objects keyed by name (a missing or unknown name is a 422 naming it)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from model_store import ModelStore
from service.app import create_app
from service.settings import Settings
from tests.helpers.flows import make_flow

NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("columns") / "store"
    store = ModelStore(root)
    store.publish("iris", make_flow(4, seed=1), training={"columns": NAMES})
    store.publish("plain", make_flow(2, seed=2))  # trained before names were kept
    settings = Settings(
        store_dir=root, redis_url="redis://127.0.0.1:1/0", device="cpu",
        inference_threads=1, torch_threads=1,
    )  # fmt: skip
    with TestClient(create_app(settings)) as c:
        c.store = store  # type: ignore[attr-defined]
        yield c


def _rows(n: int = 5) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 4))


def test_the_model_names_its_columns(client: TestClient) -> None:
    assert client.get("/v1/models/iris").json()["columns"] == NAMES
    assert client.get("/v1/models/plain").json()["columns"] == ["x1", "x2"]


def test_rows_keyed_by_name_score_as_lists_in_the_model_order(client: TestClient) -> None:
    x = _rows()
    as_lists = client.post("/v1/models/iris/log_prob", json={"inputs": x.tolist()})
    # The keys in another order than the model's: placed by name, not by position.
    keyed = [{n: float(r[j]) for j, n in reversed(list(enumerate(NAMES)))} for r in x]
    as_objects = client.post("/v1/models/iris/log_prob", json={"inputs": keyed})
    assert as_objects.status_code == 200, as_objects.text
    assert as_objects.json()["log_prob"] == as_lists.json()["log_prob"]
    flow = client.store.load("iris").flow  # type: ignore[attr-defined]
    ref = flow.log_prob(torch.tensor(x, dtype=torch.float32), method="exact").detach()
    np.testing.assert_allclose(as_objects.json()["log_prob"], ref.numpy(), rtol=1e-5)


@pytest.mark.parametrize(
    ("row", "code", "named"),
    [
        ({"sepal_length": 1.0, "sepal_width": 1.0, "petal_length": 1.0}, "missing_columns",
         "petal_width"),
        ({**dict.fromkeys(NAMES, 1.0), "species": 2.0}, "unknown_columns", "species"),
    ],
)  # fmt: skip
def test_keyed_rows_with_missing_or_unknown_names_are_422(
    client: TestClient, row: dict, code: str, named: str
) -> None:
    good = dict.fromkeys(NAMES, 0.5)
    r = client.post("/v1/models/iris/log_prob", json={"inputs": [good, row]})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == code
    assert "inputs[1]" in error["message"] and named in error["message"]


def test_samples_and_their_csv_download_carry_the_names(client: TestClient) -> None:
    body = {"num_samples": 7, "seed": 3}
    js = client.post("/v1/models/iris/sample", json=body).json()
    assert js["columns"] == NAMES
    r = client.post("/v1/models/iris/sample.csv", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert 'filename="iris-v1-samples.csv"' in r.headers["content-disposition"]
    assert r.headers["x-cpflow-seed"] == "3"
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == NAMES
    # The same draw as the JSON route: same seed, same samples, every digit.
    assert np.array(rows[1:], dtype=np.float64).tolist() == js["samples"]


def test_transport_names_its_output_columns(client: TestClient) -> None:
    x = _rows(3).tolist()
    forward = client.post("/v1/models/iris/transport", json={"inputs": x}).json()
    assert forward["columns"] == ["z1", "z2", "z3", "z4"]
    inverse = client.post(
        "/v1/models/iris/transport", json={"inputs": forward["outputs"], "direction": "inverse"}
    ).json()
    assert inverse["columns"] == NAMES


def test_scored_csv_without_a_header_uses_the_model_names(client: TestClient) -> None:
    text = "\n".join(",".join(repr(float(v)) for v in r) for r in _rows()) + "\n"
    r = client.post(
        "/v1/models/iris/log_prob.csv", content=text, headers={"Content-Type": "text/csv"}
    )
    assert r.status_code == 200, r.text
    assert next(csv.reader(io.StringIO(r.text))) == [*NAMES, "log_prob"]


def test_a_missing_cell_in_a_scored_csv_names_its_column(client: TestClient) -> None:
    text = ",".join(NAMES) + "\n1,2,3,4\n1,,3,4\n"
    r = client.post(
        "/v1/models/iris/log_prob.csv", content=text, headers={"Content-Type": "text/csv"}
    )
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert "data row 2, column 2 ('sepal_width') is empty" in message


def test_plain_models_keep_x_names(client: TestClient, tmp_path: Path) -> None:
    js = client.post("/v1/models/plain/sample", json={"num_samples": 2, "seed": 0}).json()
    assert js["columns"] == ["x1", "x2"]
