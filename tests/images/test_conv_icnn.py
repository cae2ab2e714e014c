"""ConvICNN: explicit gradient/HVP match autograd; convex in x for ANY parameters (property)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cpflow import CPFlowBlock
from cpflow.conv import ChannelActNorm, ConvICNN, PositiveConv2d
from cpflow.logdet import hessian_from_hvp

# float64 throughout: agreement with autograd is to round-off (tolerance 1e-10 relative).
# Reference Hessians are central differences of the AUTOGRAD gradient (double-backward through
# CPU float64 convolutions takes minutes): step 1e-5 gives errors ~1e-9, so tolerance 1e-6.


def _net(shape=(2, 3, 3), hidden=5, depth=3, activation="logistic", seed=0, scale=1.0):
    torch.manual_seed(seed)
    net = ConvICNN(shape, hidden=hidden, depth=depth, activation=activation).double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn_like(p))
    return net


def _fd_hessian(net, x, eps=1e-5):
    """(n, d, d) central differences of the autograd gradient of net at the rows x."""

    def grad(r):
        r = r.clone().requires_grad_(True)
        return torch.autograd.grad(net(r).sum(), r)[0]

    d = x.shape[1]
    cols = []
    for j in range(d):
        e = torch.zeros(d, dtype=x.dtype)
        e[j] = eps
        cols.append((grad(x + e) - grad(x - e)) / (2 * eps))
    H = torch.stack(cols, -1)
    return 0.5 * (H + H.transpose(1, 2))


def test_positive_conv_weights_are_nonnegative_for_any_raw_weights():
    conv = PositiveConv2d(3, 4).double()
    with torch.no_grad():
        conv.weight.mul_(50.0)
    assert bool((conv.effective_weight() >= 0).all())


def test_channel_actnorm_initialises_and_inverts():
    norm = ChannelActNorm(3, 4, 4).double()
    x = 2.0 + 3.0 * torch.randn(10, 3, 4, 4, dtype=torch.float64)
    norm.initialize(x)
    y = norm(x)
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(y.std((0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(norm.inverse(y), x, atol=1e-12)
    # log-det of an elementwise map over H*W pixels per channel
    expected = 16 * norm.log_scale.sum()
    assert torch.allclose(norm.logdet(), expected)


def test_gradient_and_hvp_match_autograd():
    for act in ("logistic", "gaussian", "laplace"):
        net = _net(activation=act, seed=1)
        x = torch.randn(2, 18, dtype=torch.float64)
        xr = x.clone().requires_grad_(True)
        (g_ref,) = torch.autograd.grad(net(xr).sum(), xr)
        value, g = net.value_and_grad(x)
        assert torch.allclose(value, net(x))
        assert torch.allclose(g, g_ref, rtol=1e-10, atol=1e-12)
        H_ref = _fd_hessian(net, x)
        H = hessian_from_hvp(net.linearize(x)[1].hvp, *x.shape, x.dtype, x.device)
        assert torch.allclose(H, H_ref, rtol=1e-6, atol=1e-6)
        # HVP with a leading probe dimension broadcasts like the core's
        _, lin = net.linearize(x)
        v = torch.randn(4, 2, 18, dtype=torch.float64)
        Hv = lin.hvp(v)
        assert torch.allclose(Hv, torch.einsum("nij,pnj->pni", H, v), rtol=1e-10, atol=1e-12)
        assert torch.allclose(Hv, torch.einsum("nij,pnj->pni", H_ref, v), rtol=1e-5, atol=1e-5)


def test_block_is_gradient_of_its_potential_and_hessian_dominates_alpha():
    block = CPFlowBlock(_net(seed=2)).double()
    with torch.no_grad():
        block.w1.fill_(2.0)
    x = torch.randn(4, 18, dtype=torch.float64, requires_grad=True)
    (ref,) = torch.autograd.grad(block.potential(x).sum(), x)
    assert torch.allclose(block(x.detach()), ref, rtol=1e-10, atol=1e-12)
    _, H = block.forward_and_hessian(x.detach())
    H = H.detach()
    alpha, _ = block.coefficients()
    assert float(torch.linalg.eigvalsh(H).min()) >= float(alpha.detach()) * (1 - 1e-10)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(0.1, 4.0),
    activation=st.sampled_from(["logistic", "gaussian", "laplace"]),
    symmetric=st.booleans(),
    channels=st.sampled_from([1, 3]),
)
def test_convex_in_the_image_for_any_parameters(seed, scale, activation, symmetric, channels):
    """Midpoint convexity along random chords, non-negative second differences along random
    directions (both from values only, independent of the explicit derivatives) and a PSD
    explicit Hessian, for parameters drawn with a large spread (negative raw 'positive'
    weights, big ActNorm scales, any biases)."""
    g = torch.Generator().manual_seed(seed)
    net = ConvICNN(
        (channels, 3, 3), hidden=4, depth=3, activation=activation, symmetric_first=symmetric
    ).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64))
    d = net.dim
    x = 2.0 * torch.randn(6, d, generator=g, dtype=torch.float64)
    y = 2.0 * torch.randn(6, d, generator=g, dtype=torch.float64)
    gx, gy, gm = net(x), net(y), net(0.5 * (x + y))
    # tolerance: float64 round-off relative to the size of the values
    tol = 1e-9 * (1.0 + gx.abs() + gy.abs())
    assert bool((gm <= 0.5 * (gx + gy) + tol).all())
    v = torch.randn(6, d, generator=g, dtype=torch.float64)
    t = 1e-2
    second = net(x + t * v) + net(x - t * v) - 2.0 * gx
    assert bool((second >= -1e-9 * (1.0 + gx.abs())).all())
    H = hessian_from_hvp(net.linearize(x)[1].hvp, *x.shape, x.dtype, x.device)
    ev = torch.linalg.eigvalsh(H.detach())
    assert float(ev.min()) >= -1e-10 * (1.0 + float(ev.abs().max()))
