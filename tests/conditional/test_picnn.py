"""PICNN: convex in x for ANY parameters and ANY context (hypothesis), derivatives vs autograd."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpflow.picnn import PICNN

ACTS = ["logistic", "gaussian", "laplace"]


def _random_picnn(seed, dim, cdim, kind, act, scale, cut, sym):
    g = torch.Generator().manual_seed(seed)
    net = PICNN(
        dim, cdim, hidden=6, depth=3, kind=kind, activation=act, context_hidden=5,
        cut_context=cut, symmetric_first=sym,
    ).double()  # fmt: skip
    with torch.no_grad():  # any values at all, including large / negative free weights
        for p in net.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return net, g


cases = st.tuples(
    st.integers(0, 10_000),
    st.integers(1, 4),
    st.integers(1, 3),
    st.sampled_from(["augmented", "vanilla"]),
    st.sampled_from(ACTS),
    st.floats(0.1, 3.0),
    st.booleans(),
    st.booleans(),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases)
def test_midpoint_convexity_in_x_for_fixed_context(case):
    seed, dim, cdim, kind, act, scale, cut, sym = case
    net, g = _random_picnn(seed, dim, cdim, kind, act, scale, cut, sym)
    x = 3 * torch.randn(64, dim, generator=g, dtype=torch.float64)
    y = 3 * torch.randn(64, dim, generator=g, dtype=torch.float64)
    c = 3 * torch.randn(64, cdim, generator=g, dtype=torch.float64)  # one context per pair
    with torch.no_grad():
        fx, fy, fm = net(x, c), net(y, c), net(0.5 * (x + y), c)
    # convexity in x: the midpoint gap is >= 0 up to float64 round-off (~1e-12 relative)
    tol = 1e-10 * (1 + fx.abs() + fy.abs())
    assert (0.5 * (fx + fy) - fm >= -tol).all()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases)
def test_hessian_in_x_is_psd_and_matches_autograd(case):
    seed, dim, cdim, kind, act, scale, cut, sym = case
    net, g = _random_picnn(seed, dim, cdim, kind, act, scale, cut, sym)
    x = 2 * torch.randn(8, dim, generator=g, dtype=torch.float64)
    c = 2 * torch.randn(8, cdim, generator=g, dtype=torch.float64)
    grad, H = net.grad_and_hessian(x, c)
    xr = x.clone().requires_grad_()
    ga = torch.autograd.grad(net(xr, c).sum(), xr, create_graph=True)[0]
    Ha = torch.stack(
        [torch.autograd.grad(ga[:, i].sum(), xr, retain_graph=True)[0] for i in range(dim)], 1
    )
    scale_ = float(1 + Ha.detach().abs().amax())
    # analytic vs autograd: same float64 operations in another order -> ~1e-12 relative
    assert torch.allclose(grad, ga, atol=1e-9 * float(1 + ga.detach().abs().amax()), rtol=0)
    assert torch.allclose(H, Ha, atol=1e-9 * scale_, rtol=0)
    # PSD: smallest eigenvalue >= -round-off
    assert torch.linalg.eigvalsh(H).min() >= -1e-9 * scale_


@pytest.mark.parametrize("kind", ["augmented", "vanilla"])
@pytest.mark.parametrize("cut", [True, False])
def test_hvp_and_value_and_grad_match(kind, cut):
    net, g = _random_picnn(3, 3, 2, kind, "logistic", 1.0, cut, True)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64)
    c = torch.randn(7, 2, generator=g, dtype=torch.float64)
    grad, H = net.grad_and_hessian(x, c)
    val, grad2 = net.value_and_grad(x, c)
    g3, lin = net.linearize(x, c)
    v = torch.randn(4, 7, 3, generator=g, dtype=torch.float64)  # probes broadcast over the batch
    assert torch.allclose(val, net(x, c), atol=1e-12)
    assert torch.allclose(grad, grad2, atol=1e-12) and torch.allclose(grad, g3, atol=1e-12)
    assert torch.allclose(lin.hvp(v), torch.einsum("nij,pnj->pni", H, v), atol=1e-10)
    idx = torch.tensor([1, 5])
    assert torch.allclose(lin.restrict(idx).hvp(v[:, idx]), lin.hvp(v)[:, idx], atol=1e-12)


def test_context_changes_the_function_and_cut_path_has_one_context_layer():
    net, g = _random_picnn(1, 2, 1, "augmented", "logistic", 1.0, True, True)
    assert len(net.ctx) == 1
    deep, _ = _random_picnn(1, 2, 1, "augmented", "logistic", 1.0, False, True)
    assert len(deep.ctx) == 3
    x = torch.randn(5, 2, generator=g, dtype=torch.float64)
    c0 = torch.zeros(5, 1, dtype=torch.float64)
    c1 = torch.ones(5, 1, dtype=torch.float64)
    assert (net(x, c0) - net(x, c1)).abs().max() > 1e-6


def test_rejects_dense_kind():
    with pytest.raises(ValueError):
        PICNN(2, 1, kind="dense")
