"""ICNN convexity for ANY parameters (hypothesis), and analytic derivatives vs autograd."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpflow.block import CPFlowBlock
from cpflow.icnn import ICNN

KINDS = ["vanilla", "augmented", "dense"]
ACTS = ["logistic", "gaussian", "laplace"]


def _random_icnn(seed: int, dim: int, kind: str, act: str, scale: float, sym: bool, zero: bool):
    g = torch.Generator().manual_seed(seed)
    net = ICNN(
        dim,
        hidden=6,
        depth=3,
        kind=kind,
        activation=act,
        symmetric_first=sym,
        zero_offset=zero,
        actnorm=True,
    ).double()
    with torch.no_grad():
        for p in net.parameters():  # any values at all, including large/negative free weights
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return net, g


icnn_cases = st.tuples(
    st.integers(0, 10_000),
    st.integers(1, 4),
    st.sampled_from(KINDS),
    st.sampled_from(ACTS),
    st.floats(0.1, 3.0),
    st.booleans(),
    st.booleans(),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(icnn_cases)
def test_midpoint_convexity_for_random_parameters(case):
    seed, dim, kind, act, scale, sym, zero = case
    net, g = _random_icnn(seed, dim, kind, act, scale, sym, zero)
    x = 3 * torch.randn(64, dim, generator=g, dtype=torch.float64)
    y = 3 * torch.randn(64, dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        gap = 0.5 * (net(x) + net(y)) - net(0.5 * (x + y))
    # convexity: the gap is >= 0 up to float64 round-off of the values (~1e-12 relative)
    tol = 1e-10 * (1 + net(x).abs() + net(y).abs()).detach()
    assert (gap >= -tol).all()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(icnn_cases)
def test_analytic_hessian_is_psd_and_equals_autograd(case):
    seed, dim, kind, act, scale, sym, zero = case
    net, g = _random_icnn(seed, dim, kind, act, scale, sym, zero)
    x = 2 * torch.randn(5, dim, generator=g, dtype=torch.float64)
    grad, H = net.grad_and_hessian(x)
    assert torch.linalg.eigvalsh(H).min() >= -1e-10 * (1 + H.abs().amax())
    # independent reference: autograd Hessian of the scalar value network
    for i in range(x.shape[0]):
        ref_H = torch.autograd.functional.hessian(lambda t: net(t[None])[0], x[i])
        ref_g = torch.autograd.functional.jacobian(lambda t: net(t[None])[0], x[i])
        torch.testing.assert_close(H[i], ref_H, atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(grad[i], ref_g, atol=1e-10, rtol=1e-9)
    # Hessian-vector products (tangent sweep) agree with the dense Hessian, with probe dims
    v = torch.randn(3, 5, dim, generator=g, dtype=torch.float64)
    _, lin = net.linearize(x)
    torch.testing.assert_close(
        lin.hvp(v), torch.einsum("nij,pnj->pni", H, v), atol=1e-10, rtol=1e-9
    )
    val, grad2 = net.value_and_grad(x)
    torch.testing.assert_close(val, net(x))
    torch.testing.assert_close(grad2, grad)


@pytest.mark.parametrize("kind", KINDS)
def test_block_map_is_gradient_of_potential_and_identity_like_hessian(kind):
    net = ICNN(3, hidden=8, depth=2, kind=kind).double()
    block = CPFlowBlock(net).double()
    with torch.no_grad():
        block.w1.fill_(0.5)
        block.w0.fill_(-0.3)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    (ref,) = torch.autograd.grad(block.potential(x).sum(), x)
    torch.testing.assert_close(block(x), ref)
    _, H = block.forward_and_hessian(x.detach())
    alpha = float(torch.nn.functional.softplus(block.w0.detach()))
    # H >= softplus(w0) I: strong convexity of the potential
    assert torch.linalg.eigvalsh(H).min() >= alpha - 1e-12
    _, op = block.linearize(x.detach())
    v = torch.randn(6, 3, dtype=torch.float64)
    torch.testing.assert_close(op(v), torch.einsum("nij,nj->ni", H, v))


def test_augmented_wiring_half_units_see_x_only():
    net = ICNN(2, hidden=10, depth=3, kind="augmented")
    assert net.pos_rows == [0, 5, 5]
    assert net.pos[0].out_features == 5 and net.pos[0].in_features == 10
    dense = ICNN(2, hidden=10, depth=3, kind="dense")
    assert dense.pos[1].in_features == 20 and dense.out_pos.in_features == 30


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("depth", [1, 3])
def test_upper_triangle_hessian_matches_the_full_one_and_gives_the_same_logdet(kind, depth):
    """The inference path builds only the triangle an upper Cholesky reads."""
    from cpflow.logdet import cholesky_logdet

    g = torch.Generator().manual_seed(depth)
    net = ICNN(5, hidden=6, depth=depth, kind=kind).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    with torch.no_grad():
        grad, full = net.grad_and_hessian(x, 0.7, 0.2)
        grad_u, upper = net.grad_and_hessian(x, 0.7, 0.2, upper_only=True)
    rows, cols = torch.triu_indices(5, 5)
    torch.testing.assert_close(grad_u, grad)
    torch.testing.assert_close(upper[:, rows, cols], full[:, rows, cols], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cholesky_logdet(upper), cholesky_logdet(full), rtol=0, atol=1e-12)
    block = CPFlowBlock(net).double()
    with torch.no_grad():
        y_fast, ld_fast = block.forward_and_logdet(x)  # no autograd: upper triangle only
    y, ld = block.forward_and_logdet(x)  # autograd: the full Hessian
    torch.testing.assert_close(y_fast, y.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(ld_fast, ld.detach(), rtol=0, atol=1e-12)
