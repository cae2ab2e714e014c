"""The radial convex term (cpflow.radial) against autograd, and inside a flow."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cpflow.export import export_onnx
from cpflow.radial import RadialTerm


def _random_radial(dim: int, seed: int) -> RadialTerm:
    g = torch.Generator().manual_seed(seed)
    term = RadialTerm(dim, units=6).double()
    with torch.no_grad():
        for p in term.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return term


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_gradient_hessian_and_hvp_match_autograd(dim):
    # float64 closed forms against autograd of R itself: agreement to round-off (1e-10)
    term = _random_radial(dim, seed=dim)
    x = 2.0 * torch.randn(7, dim, dtype=torch.float64)
    x[0] = 0.0  # the smoothed norm is differentiable at the origin too
    grad, H = term.grad_and_hessian(x)
    x_ag = x.clone().requires_grad_(True)
    g_ag = torch.autograd.grad(term(x_ag).sum(), x_ag)[0]
    torch.testing.assert_close(grad, g_ag, atol=1e-10, rtol=0)
    H_ag = torch.stack(
        [torch.autograd.functional.hessian(lambda t: term(t[None])[0], r) for r in x]
    )
    torch.testing.assert_close(H, H_ag, atol=1e-10, rtol=0)
    _, hvp = term.linearize(x)
    v = torch.randn(3, 7, dim, dtype=torch.float64)  # three probes broadcast over the batch
    torch.testing.assert_close(hvp(v), torch.einsum("nij,pnj->pni", H, v), atol=1e-10, rtol=0)
    idx = torch.tensor([1, 4])
    torch.testing.assert_close(hvp.restrict(idx)(v[:, idx]), hvp(v)[:, idx], atol=0, rtol=0)


@pytest.mark.parametrize("seed", range(5))
def test_convex_for_random_parameters(seed):
    term = _random_radial(3, seed)
    x = 3.0 * torch.randn(200, 3, dtype=torch.float64)
    y = 3.0 * torch.randn(200, 3, dtype=torch.float64)
    with torch.no_grad():
        gap = 0.5 * (term(x) + term(y)) - term(0.5 * (x + y))
        eig = torch.linalg.eigvalsh(term.grad_and_hessian(x)[1])
    assert gap.min() >= -1e-12
    assert eig.min() >= -1e-12


def test_term_is_rotation_invariant_and_moves_points_radially():
    term = _random_radial(2, seed=9)
    x = torch.randn(16, 2, dtype=torch.float64)
    theta = 0.7
    rot = torch.tensor(
        [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]],
        dtype=torch.float64,
    )
    with torch.no_grad():
        torch.testing.assert_close(term(x @ rot.T), term(x), atol=1e-12, rtol=0)
        g = term.grad(x)
    cross = g[:, 0] * x[:, 1] - g[:, 1] * x[:, 0]  # gradient parallel to x
    assert cross.abs().max() <= 1e-12


def test_initial_term_is_a_small_perturbation():
    # at initialisation the radial curvature R'' stays near init_curvature = 0.1 over the data
    # range (each step as wide as the spacing), so a block starts close to its identity part
    term = RadialTerm(2, units=16).double()
    x = 2.0 * torch.randn(500, 2, dtype=torch.float64)
    eig = torch.linalg.eigvalsh(term.grad_and_hessian(x)[1])
    assert eig.max() < 0.2
    with pytest.raises(ValueError, match="units"):
        RadialTerm(2, units=0)
    # the centres span the bulk of the norms of standardised data in any dimension
    for dim in (2, 43):
        norms = torch.randn(2000, dim).norm(dim=1)
        centres = RadialTerm(dim, units=8).centre.detach()
        assert centres.min() < norms.quantile(0.1) and centres.max() > norms.quantile(0.95)


def _autograd_log_prob(flow, x):
    out = []
    for row in x:
        J = torch.autograd.functional.jacobian(lambda t: flow.transform(t[None])[0], row)
        z = flow.transform(row[None])[0]
        base = -0.5 * (z * z).sum() - 0.5 * x.shape[1] * math.log(2 * math.pi)
        out.append(base + torch.linalg.slogdet(J)[1])
    return torch.stack(out)


@pytest.mark.parametrize("dim", [1, 2, 4])
def test_flow_with_radial_units_log_prob_slq_and_inverse(make_flow, dim):
    flow = make_flow(dim, radial_units=5, icnn="dense", activation="gaussian", seed=dim)
    x = 1.5 * torch.randn(6, dim, dtype=torch.float64)
    lp = flow.log_prob(x, method="exact")
    torch.testing.assert_close(lp, _autograd_log_prob(flow, x), atol=1e-8, rtol=0)
    # Lanczos with d steps is exact for a d x d matrix up to the probe average: unbiased, so
    # 256 probes put the mean within a few standard errors of the exact value
    slq, stderr = flow.log_prob(x, method="slq", probes=256, steps=dim, return_stderr=True)
    assert ((slq - lp).abs() <= 5 * stderr + 1e-9).all()
    back, info = flow.inverse(flow.transform(x))
    assert info.all_converged
    torch.testing.assert_close(back, x, atol=1e-7, rtol=0)


def test_radial_training_gradient_reaches_the_radial_parameters(make_flow):
    flow = make_flow(2, radial_units=4, dtype="float32")
    loss, _ = flow.training_loss(torch.randn(32, 2))
    loss.backward()
    for block in flow.blocks():
        for p in block.radial.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_onnx_export_with_radial_units(make_flow, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    flow = make_flow(2, dtype="float32", radial_units=8, activation="gaussian")
    path = export_onnx(flow, tmp_path / "r.onnx")
    x = 2 * torch.randn(9, 2)
    out = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(out, flow.transform(x).detach().numpy(), atol=2e-5, rtol=1e-5)
