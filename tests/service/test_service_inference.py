"""Inference through a real uvicorn process: values match the library, maps invert, seeds repeat.

Reference values come from the library itself (``ModelStore.load`` in this process), an
independent path: no HTTP, no batching, no JSON. float32 models: tolerances of ~1e-4 relative
cover float32 round-off differences between a batched and an unbatched evaluation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model_store import ModelStore


@pytest.fixture(scope="module")
def toy2d(store_dir):
    return ModelStore(store_dir).load("toy2d").flow


def test_exact_log_prob_equals_library(client, toy2d):
    x = torch.tensor([[0.3, -1.0], [1.0, 1.0], [4.0, 2.5], [-2.0, 0.1]])
    r = client.post("/v1/models/toy2d/log_prob", json={"inputs": x.tolist(), "method": "exact"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["version"], body["method"], body["stderr"]) == (
        "toy2d",
        1,
        "exact",
        None,
    )
    expected = toy2d.log_prob(x, method="exact").detach()
    np.testing.assert_allclose(body["log_prob"], expected.numpy(), rtol=1e-5, atol=1e-5)


def test_pinned_version_route_equals_latest(client):
    payload = {"inputs": [[0.5, 0.5]], "method": "exact"}
    a = client.post("/v1/models/toy2d/log_prob", json=payload).json()
    b = client.post("/v1/models/toy2d/versions/1/log_prob", json=payload).json()
    assert a["log_prob"] == pytest.approx(b["log_prob"], rel=1e-6)


def test_slq_within_a_few_stderrs_of_exact(client, store_dir):
    flow = ModelStore(store_dir).load("toy4d").flow
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(3)) + 1.0
    exact = flow.log_prob(x, method="exact").detach().numpy()
    body = client.post(
        "/v1/models/toy4d/log_prob",
        json={
            "inputs": x.tolist(),
            "method": "slq",
            "slq": {"probes": 16, "steps": 10},
            "seed": 5,
        },
    ).json()
    assert body["method"] == "slq" and body["seed"] == 5
    est, se = np.array(body["log_prob"]), np.array(body["stderr"])
    assert np.all(se > 0)
    # 8 rows at 4 standard errors: a correct estimator fails this with probability ~5e-4.
    assert np.all(np.abs(est - exact) <= 4 * se + 1e-4), (est - exact, se)
    again = client.post(
        "/v1/models/toy4d/log_prob",
        json={
            "inputs": x.tolist(),
            "method": "slq",
            "slq": {"probes": 16, "steps": 10},
            "seed": 5,
        },
    ).json()
    assert again["log_prob"] == body["log_prob"]  # same seed, same estimate


def test_auto_method_is_exact_in_low_dimension(client):
    body = client.post("/v1/models/toy4d/log_prob", json={"inputs": [[1, 1, 1, 1]]}).json()
    assert body["method"] == "exact"


def test_density_integrates_to_one_over_a_grid(client):
    # The data were ~ N(1, diag(0.5, 2)^2)-like; a box of +-8 standard deviations holds all the
    # mass of a flow this close to Gaussian. Midpoint rule on 121 x 121 cells.
    xs = np.linspace(1 - 8 * 0.5, 1 + 8 * 0.5, 121)
    ys = np.linspace(1 - 8 * 2.0, 1 + 8 * 2.0, 121)
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    pts = np.stack([gx.ravel(), gy.ravel()], 1)
    lp = []
    for chunk in np.array_split(pts, 3):
        r = client.post(
            "/v1/models/toy2d/log_prob", json={"inputs": chunk.tolist(), "method": "exact"}
        )
        assert r.status_code == 200, r.text
        lp += r.json()["log_prob"]
    density = np.exp(np.array(lp, dtype=float)).reshape(gx.shape)
    cell = (xs[1] - xs[0]) * (ys[1] - ys[0])
    total = density.sum() * cell
    # Tolerance 2%: grid discretisation error plus mass outside the box (both well below this).
    assert total == pytest.approx(1.0, abs=0.02)


def test_sample_then_forward_returns_the_latent_draws(client):
    n, seed = 16, 123
    s = client.post(
        "/v1/models/toy2d/sample", json={"num_samples": n, "seed": seed, "tolerance": 1e-5}
    )
    assert s.status_code == 200, s.text
    body = s.json()
    assert body["converged"] is True and body["seed"] == seed
    assert body["max_residual"] is not None and body["max_residual"] <= 1e-5
    # Independent reference: the standard-normal draws of that seed.
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)).numpy()
    f = client.post(
        "/v1/models/toy2d/transport", json={"inputs": body["samples"], "direction": "forward"}
    )
    assert f.status_code == 200, f.text
    out = np.array(f.json()["outputs"])
    # Residual is max|f(x) - z| as the server measured it; allow float32 re-evaluation noise.
    assert np.max(np.abs(out - z)) <= body["max_residual"] + 1e-5


def test_inverse_undoes_forward_to_the_reported_residual(client):
    x = [[0.3, -1.0], [1.0, 1.0], [2.0, 3.5]]
    z = client.post("/v1/models/toy2d/transport", json={"inputs": x}).json()["outputs"]
    inv = client.post(
        "/v1/models/toy2d/transport",
        json={"inputs": z, "direction": "inverse", "tolerance": 1e-6},
    ).json()
    assert inv["direction"] == "inverse" and inv["converged"] is True
    res = inv["max_residual"]
    assert res is not None and res <= 1e-6
    z2 = client.post("/v1/models/toy2d/transport", json={"inputs": inv["outputs"]}).json()[
        "outputs"
    ]
    assert np.max(np.abs(np.array(z2) - np.array(z))) <= res + 1e-5
    # And x itself is recovered (the map is well conditioned here: H >= softplus(w0) I).
    np.testing.assert_allclose(inv["outputs"], x, atol=1e-3)


def test_same_seed_same_samples_and_different_seed_differs(client):
    a = client.post("/v1/models/toy2d/sample", json={"num_samples": 8, "seed": 9}).json()
    b = client.post("/v1/models/toy2d/sample", json={"num_samples": 8, "seed": 9}).json()
    c = client.post("/v1/models/toy2d/sample", json={"num_samples": 8, "seed": 10}).json()
    assert a["samples"] == b["samples"]
    assert a["samples"] != c["samples"]
    unseeded = client.post("/v1/models/toy2d/sample", json={"num_samples": 2}).json()
    assert isinstance(unseeded["seed"], int)


def test_extreme_but_finite_input_gives_null_not_an_error(client):
    r = client.post(
        "/v1/models/toy2d/log_prob", json={"inputs": [[1e30, 0.0], [1.0, 1.0]], "method": "exact"}
    )
    assert r.status_code == 200, r.text
    lp = r.json()["log_prob"]
    assert lp[0] is None and math.isfinite(lp[1])


def test_newton_solver_option_gives_the_same_samples_and_inverse(client):
    n, seed = 8, 77
    lb = client.post(
        "/v1/models/toy2d/sample", json={"num_samples": n, "seed": seed, "tolerance": 1e-5}
    ).json()
    nt = client.post(
        "/v1/models/toy2d/sample",
        json={"num_samples": n, "seed": seed, "tolerance": 1e-5, "solver": "newton"},
    ).json()
    assert nt["converged"] is True
    # Same draws, a different solver: the same points up to the two tolerances (the inverse is
    # 1-Lipschitz-bounded here, H >= softplus(w0) I, so a 1e-5 residual moves x by ~1e-5).
    np.testing.assert_allclose(nt["samples"], lb["samples"], atol=1e-3)
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)).numpy()
    inv = client.post(
        "/v1/models/toy2d/transport",
        json={"inputs": z.tolist(), "direction": "inverse", "solver": "newton", "tolerance": 1e-5},
    ).json()
    np.testing.assert_allclose(inv["outputs"], nt["samples"], atol=1e-4)
    bad = client.post("/v1/models/toy2d/sample", json={"num_samples": 2, "solver": "adam"})
    assert bad.status_code == 422
