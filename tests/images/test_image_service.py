"""Image models through a real uvicorn server: [n, C, H, W] requests equal flat rows and the
library, transport round-trips in image layout, samples come back as images, wrong shapes are
422 wrong_shape naming both shapes, and the sample grid is served as a plot."""

from __future__ import annotations

import httpx
import pytest
import torch

from model_store import ModelStore
from tests.helpers.flows import make_flow
from tests.helpers.image_flows import random_image_flow
from tests.helpers.service import run_server
from training.images import sample_grid_png

SHAPE = (1, 4, 4)


@pytest.fixture(scope="module")
def image_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgsvc") / "store"
    flow = random_image_flow(SHAPE, (1, 1), hidden=4, depth=2, seed=5)
    grid = sample_grid_png(torch.rand(4, *SHAPE))
    store = ModelStore(root)
    store.publish("digits", flow, plots={"samples.png": grid})
    store.publish("plain", make_flow(3))
    env = {"CPFLOW_STORE_DIR": str(root), "CPFLOW_REDIS_URL": "redis://127.0.0.1:1/0"}
    log = tmp_path_factory.mktemp("logs") / "image-server.log"
    with run_server(env, log_path=log) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, flow, grid


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=g, dtype=torch.float64)


def test_detail_shows_input_shape_and_plot_is_served(image_setup):
    client, _, grid = image_setup
    detail = client.get("/v1/models/digits").json()
    assert detail["input_shape"] == list(SHAPE) and detail["dim"] == 16
    assert client.get("/v1/models/plain").json()["input_shape"] is None
    url = detail["plots"]["samples.png"]
    r = client.get(url)
    assert r.status_code == 200 and r.content == grid and r.content.startswith(b"\x89PNG")
    assert client.get("/v1/models/digits/plots/samples.png").content == grid


def test_log_prob_images_equal_rows_and_library(image_setup):
    client, flow, _ = image_setup
    x = _images(3, 0)
    lp_img = client.post("/v1/models/digits/log_prob", json={"inputs": x.tolist()})
    lp_rows = client.post("/v1/models/digits/log_prob", json={"inputs": x.reshape(3, -1).tolist()})
    assert lp_img.status_code == 200, lp_img.text
    a = torch.tensor(lp_img.json()["log_prob"], dtype=torch.float64)
    b = torch.tensor(lp_rows.json()["log_prob"], dtype=torch.float64)
    assert lp_img.json()["method"] == "exact"
    assert torch.allclose(a, b, rtol=0, atol=1e-9)
    assert torch.allclose(a, flow.log_prob(x, method="exact"), rtol=1e-9, atol=1e-8)
    slq = {"method": "slq", "seed": 3, "slq": {"probes": 2, "steps": 4}}
    s_img = client.post("/v1/models/digits/log_prob", json={"inputs": x.tolist(), **slq}).json()
    s_rows = client.post(
        "/v1/models/digits/log_prob", json={"inputs": x.reshape(3, -1).tolist(), **slq}
    ).json()
    assert s_img["method"] == "slq" and len(s_img["stderr"]) == 3
    assert s_img["log_prob"] == s_rows["log_prob"]


def test_transport_round_trip_in_image_layout(image_setup):
    client, flow, _ = image_setup
    x = _images(2, 1)
    fwd = client.post("/v1/models/digits/transport", json={"inputs": x.tolist()})
    assert fwd.status_code == 200, fwd.text
    z = torch.tensor(fwd.json()["outputs"], dtype=torch.float64)
    assert z.shape == (2, *SHAPE)
    assert torch.allclose(z, flow.transform(x), atol=1e-9)
    rows = client.post(
        "/v1/models/digits/transport", json={"inputs": x.reshape(2, -1).tolist()}
    ).json()["outputs"]
    assert torch.tensor(rows).shape == (2, 16)
    inv = client.post(
        "/v1/models/digits/transport",
        json={"inputs": z.tolist(), "direction": "inverse", "tolerance": 1e-8},
    )
    assert inv.status_code == 200, inv.text
    body = inv.json()
    back = torch.tensor(body["outputs"], dtype=torch.float64)
    assert back.shape == (2, *SHAPE) and body["converged"] is True
    assert (back - x).abs().max() < 1e-5


def test_sample_layouts(image_setup):
    client, flow, _ = image_setup
    r = client.post("/v1/models/digits/sample", json={"num_samples": 3, "seed": 4})
    assert r.status_code == 200, r.text
    imgs = torch.tensor(r.json()["samples"], dtype=torch.float64)
    assert imgs.shape == (3, *SHAPE)
    rows = client.post(
        "/v1/models/digits/sample", json={"num_samples": 3, "seed": 4, "layout": "rows"}
    ).json()["samples"]
    assert torch.equal(torch.tensor(rows, dtype=torch.float64), imgs.reshape(3, -1))
    # the samples invert the flow: mapping them forward gives normal draws of the right size
    z = flow.transform(imgs)
    assert torch.isfinite(z).all() and z.shape == imgs.shape
    plain = client.post("/v1/models/plain/sample", json={"num_samples": 2, "layout": "image"})
    assert plain.status_code == 422 and plain.json()["error"]["code"] == "wrong_shape"
    rows_plain = client.post("/v1/models/plain/sample", json={"num_samples": 2}).json()
    assert torch.tensor(rows_plain["samples"]).shape == (2, 3)


def _shape_error(client, name: str, inputs, *needles: str) -> str:
    r = client.post(f"/v1/models/{name}/log_prob", json={"inputs": inputs})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "wrong_shape", err
    for needle in needles:
        assert needle in err["message"], err
    return err["message"]


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ((2, 1, 4, 5), "[2, 1, 4, 5]"),
        ((2, 2, 4, 4), "[2, 2, 4, 4]"),
        ((1, 1, 3, 4), "[1, 1, 3, 4]"),
        ((2, 15), "[2, 15]"),
    ],
)
def test_wrong_shapes_name_expected_and_given(image_setup, given, shown):
    client, _, _ = image_setup
    _shape_error(client, "digits", torch.zeros(given).tolist(), "[n, 1, 4, 4]", "[n, 16]", shown)


def test_ragged_and_mixed_images_and_images_for_plain_models(image_setup):
    client, _, _ = image_setup
    good = torch.zeros(2, *SHAPE).tolist()
    good[1][0][2] = [0.0, 0.0, 0.0]  # one short pixel row in the second image
    _shape_error(client, "digits", good, "inputs[1]", "[n, 1, 4, 4]")
    mixed = [torch.zeros(SHAPE).tolist(), [0.0] * 16]
    _shape_error(client, "digits", mixed, "mixes numbers and lists")
    _shape_error(client, "plain", torch.zeros(2, 1, 1, 3).tolist(), "[n, 3]", "[2, 1, 1, 3]")
    # transport checks the same way
    r = client.post("/v1/models/digits/transport", json={"inputs": torch.zeros(1, 16, 1).tolist()})
    assert r.status_code == 422


def test_image_values_are_validated(image_setup):
    client, _, _ = image_setup
    x = torch.zeros(1, *SHAPE).tolist()
    x[0][0][1][2] = "0.5"
    r = client.post("/v1/models/digits/log_prob", json={"inputs": x})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    x[0][0][1][2] = True
    r = client.post("/v1/models/digits/log_prob", json={"inputs": x})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    r = client.post("/v1/models/digits/sample", json={"num_samples": 1, "solver": "newton"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unsupported_solver"
