"""Conditional models p(x | c) through a real uvicorn server: log_prob with aligned and
broadcast contexts equals the library, transport round-trips with a context, seeded sampling is
repeatable and equals the library's draws, and every context problem is a 422 with its code."""

from __future__ import annotations

import httpx
import pytest
import torch

from model_store import ModelStore
from tests.helpers.flows import conditional_flow, make_flow
from tests.helpers.service import run_server


@pytest.fixture(scope="module")
def cond_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("condsvc") / "store"
    flow = conditional_flow()
    store = ModelStore(root)
    store.publish("cond", flow)
    store.publish("plain", make_flow(2))
    flow = store.load("cond").flow.eval()  # exactly what the server serves
    env = {"CPFLOW_STORE_DIR": str(root), "CPFLOW_REDIS_URL": "redis://127.0.0.1:1/0"}
    log = tmp_path_factory.mktemp("logs") / "cond-server.log"
    with run_server(env, log_path=log) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, flow


def _rows(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g) + 1.0
    c = torch.rand(n, 1, generator=g) * 2.0 - 1.0
    return x, c


def test_detail_shows_context_dim(cond_setup):
    client, _ = cond_setup
    detail = client.get("/v1/models/cond").json()
    assert detail["context_dim"] == 1 and detail["dim"] == 2
    assert client.get("/v1/models/plain").json()["context_dim"] is None


def test_log_prob_aligned_and_broadcast_equal_library(cond_setup):
    client, flow = cond_setup
    x, c = _rows(4, 0)
    r = client.post("/v1/models/cond/log_prob", json={"inputs": x.tolist(), "context": c.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "exact"
    got = torch.tensor(body["log_prob"])
    assert torch.allclose(got, flow.log_prob(x, c, method="exact"), rtol=1e-5, atol=1e-5)
    one = [[0.3]]
    b = client.post("/v1/models/cond/log_prob", json={"inputs": x.tolist(), "context": one})
    assert b.status_code == 200, b.text
    lib = flow.log_prob(x, torch.tensor(one), method="exact")
    assert torch.allclose(torch.tensor(b.json()["log_prob"]), lib, rtol=1e-5, atol=1e-5)
    # The context matters: another context gives another density.
    assert not torch.allclose(torch.tensor(b.json()["log_prob"]), got, atol=1e-3)
    slq = {"method": "slq", "seed": 4, "slq": {"probes": 2, "steps": 4}}
    s = client.post(
        "/v1/models/cond/log_prob", json={"inputs": x.tolist(), "context": c.tolist(), **slq}
    )
    assert s.status_code == 200, s.text
    assert s.json()["method"] == "slq" and len(s.json()["stderr"]) == 4
    assert all(v is not None for v in s.json()["log_prob"])


def test_transport_round_trip_with_context(cond_setup):
    client, flow = cond_setup
    x, c = _rows(3, 1)
    fwd = client.post(
        "/v1/models/cond/transport", json={"inputs": x.tolist(), "context": c.tolist()}
    )
    assert fwd.status_code == 200, fwd.text
    z = torch.tensor(fwd.json()["outputs"])
    assert torch.allclose(z, flow.transform(x, c), rtol=1e-5, atol=1e-5)
    inv = client.post(
        "/v1/models/cond/transport",
        json={"inputs": z.tolist(), "context": c.tolist(), "direction": "inverse",
              "tolerance": 1e-5},
    )  # fmt: skip
    assert inv.status_code == 200, inv.text
    assert inv.json()["converged"] is True
    assert torch.allclose(torch.tensor(inv.json()["outputs"]), x, atol=1e-3)


def test_sample_seeded_repeatable_and_inverts_flow(cond_setup):
    client, flow = cond_setup
    body = {"num_samples": 5, "seed": 7, "context": [[0.5]], "tolerance": 1e-5}
    a = client.post("/v1/models/cond/sample", json=body)
    b = client.post("/v1/models/cond/sample", json=body)
    assert a.status_code == 200, a.text
    assert a.json()["samples"] == b.json()["samples"] and a.json()["seed"] == 7
    assert a.json()["converged"] is True
    xs = torch.tensor(a.json()["samples"])
    assert xs.shape == (5, 2)
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(7))
    # Forward-transporting the samples with the same context gives back the seeded normals.
    fwd = client.post(
        "/v1/models/cond/transport", json={"inputs": xs.tolist(), "context": [[0.5]]}
    )
    assert torch.allclose(torch.tensor(fwd.json()["outputs"]), z, atol=1e-3)
    # One context row per sample: num_samples equals the rows; samples differ with c.
    rows = {"num_samples": 2, "seed": 7, "context": [[-1.0], [1.0]]}
    r = client.post("/v1/models/cond/sample", json=rows)
    assert r.status_code == 200, r.text
    ctx = torch.tensor([[-1.0], [1.0]])
    back = flow.transform(torch.tensor(r.json()["samples"]), ctx)
    assert torch.allclose(back, z[:2], atol=1e-3)


@pytest.mark.parametrize(
    ("path", "extra", "code"),
    [
        ("log_prob", {}, "context_required"),
        ("log_prob", {"context": [[0.1, 0.2]] * 2}, "context_shape"),
        ("log_prob", {"context": [[0.1], [0.2], [0.3]]}, "context_rows"),
        ("transport", {}, "context_required"),
        ("transport", {"context": [[1e39]]}, "context_not_finite"),  # overflows float32
        ("sample", {"context": [[0.1], [0.2]]}, "context_rows"),  # num_samples 3, 2 rows
        ("sample", {}, "context_required"),
    ],
)
def test_context_errors_are_422_with_code(cond_setup, path, extra, code):
    client, _ = cond_setup
    body = (
        {"num_samples": 3, **extra} if path == "sample" else {"inputs": [[0.1, 0.2]] * 2, **extra}
    )
    r = client.post(f"/v1/models/cond/{path}", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code, r.text


def test_nan_context_is_context_not_finite(cond_setup):
    client, _ = cond_setup
    raw = '{"inputs": [[0.1, 0.2]], "context": [[NaN]]}'
    r = client.post(
        "/v1/models/cond/log_prob", content=raw, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "context_not_finite"


def test_context_on_plain_model_is_refused(cond_setup):
    client, _ = cond_setup
    for path, body in [
        ("log_prob", {"inputs": [[0.1, 0.2]], "context": [[0.5]]}),
        ("transport", {"inputs": [[0.1, 0.2]], "context": [[0.5]]}),
        ("sample", {"num_samples": 2, "context": [[0.5]]}),
    ]:
        r = client.post(f"/v1/models/plain/{path}", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "context_not_accepted"
    ok = client.post("/v1/models/plain/log_prob", json={"inputs": [[0.1, 0.2]]})
    assert ok.status_code == 200


def test_csv_scoring_takes_the_context_from_the_last_columns(cond_setup):
    client, flow = cond_setup
    x, c = _rows(6, 5)
    rows = torch.cat([x, c], dim=1).double().tolist()
    text = "a,b,c\n" + "".join(",".join(repr(v) for v in row) + "\n" for row in rows)
    headers = {"Content-Type": "text/csv"}
    r = client.post("/v1/models/cond/log_prob.csv", content=text, headers=headers)
    assert r.status_code == 200, r.text
    lines = r.text.strip().split("\n")
    assert lines[0] == "a,b,c,log_prob"
    got = torch.tensor([float(line.rsplit(",", 1)[1]) for line in lines[1:]])
    assert torch.allclose(got, flow.log_prob(x, c, method="exact"), rtol=1e-5, atol=1e-5)
    short = client.post("/v1/models/cond/log_prob.csv", content="1,2\n", headers=headers)
    assert short.status_code == 422, short.text
    assert short.json()["error"]["code"] == "wrong_dimension"
    assert "expects 2 plus 1 context columns (last)" in short.json()["error"]["message"]
