"""SLQ and the CG surrogate of Algorithm 2 against exact (Cholesky) log-determinants."""

from __future__ import annotations

import pytest
import torch

from cpflow import CPFlow, FlowConfig
from cpflow.logdet import cholesky_logdet, conjugate_gradient, rademacher


def _logdet_part(flow, x, lp):
    """log p minus the base density and constant (affine) log-dets = sum of block log-dets."""
    return lp - flow._base_log_prob(flow.transform(x)) - flow._const_logdet()


@pytest.mark.parametrize("dim", [16, 64])
def test_slq_within_one_percent_of_exact(make_flow, dim):
    flow = make_flow(dim, blocks=2, hidden=32, depth=2, seed=dim)
    x = torch.randn(8, dim, dtype=torch.float64)
    exact = flow.log_prob(x, method="exact")
    est, se = flow.log_prob(
        x,
        method="slq",
        probes=64,
        steps=30,
        return_stderr=True,
        generator=torch.Generator().manual_seed(1),
    )
    ld = _logdet_part(flow, x, exact)
    assert (ld.abs() > 1.0).all()  # the log-det is not trivially small
    assert ((est - exact).abs() / ld.abs()).max() < 0.01
    # the error is of the size the standard error says (not 5 standard errors off)
    assert ((est - exact).abs() < 5 * se).all()


def test_slq_stderr_shrinks_like_inverse_sqrt_probes(make_flow):
    flow = make_flow(16, blocks=2, hidden=16, depth=2)
    x = torch.randn(24, 16, dtype=torch.float64)
    ses = {}
    for p in (16, 256):
        _, se = flow.log_prob(
            x,
            method="slq",
            probes=p,
            steps=16,
            return_stderr=True,
            generator=torch.Generator().manual_seed(p),
        )
        ses[p] = se.mean()
    ratio = float(ses[16].detach() / ses[256].detach())  # sqrt(256 / 16) = 4
    assert 3.2 < ratio < 4.8


def test_slq_exact_for_one_dimension(make_flow):
    # d = 1: v^T log(H) v = log H exactly for v = +-1, so SLQ equals exact and stderr is 0
    flow = make_flow(1)
    x = torch.randn(10, 1, dtype=torch.float64)
    est, se = flow.log_prob(x, method="slq", probes=4, return_stderr=True)
    torch.testing.assert_close(est, flow.log_prob(x), atol=1e-10, rtol=0)
    assert se.abs().max() < 1e-10


def test_auto_switches_on_dimension():
    flow = CPFlow(FlowConfig(dim=3, blocks=1, hidden=4, depth=1, exact_max_dim=2))
    x = torch.randn(4, 3)
    _, se = flow.log_prob(x, method="auto", return_stderr=True)
    assert se is not None  # slq above exact_max_dim
    with pytest.raises(ValueError):
        flow.log_prob(x, "bogus")


def test_cg_per_sample_stopping_rule_and_solution(make_flow):
    flow = make_flow(12, blocks=1, hidden=16, depth=2)
    block = flow.blocks()[0]
    x = torch.randn(50, 12, dtype=torch.float64)
    _, H = block.forward_and_hessian(x)
    _, op = block.linearize(x)
    v = rademacher((50, 12), dtype=torch.float64, device=x.device)
    for atol, rtol in [(1e-10, 0.0), (1e-2, 0.0), (0.0, 1e-3)]:
        res = conjugate_gradient(op, v, atol=atol, rtol=rtol)
        true_res = (torch.einsum("nij,nj->ni", H, res.solution) - v).abs().amax(-1)
        thresh = atol + rtol * v.abs().amax(-1)
        assert res.converged.all() and (res.iterations <= 12).all()
        assert (true_res <= thresh * 1.01 + 1e-12).all()
    exact = torch.linalg.solve(H, v)
    res = conjugate_gradient(op, v, atol=1e-12)
    torch.testing.assert_close(res.solution, exact, atol=1e-9, rtol=0)
    # samples stop individually: a loose tolerance gives different counts per sample
    loose = conjugate_gradient(op, v, atol=0.05)
    assert loose.iterations.min() < loose.iterations.max() or loose.iterations.max() < 12
    # a caller's H v stands in for the first product (both the compacting and the batched
    # variant) and changes nothing else
    for operator in (op, lambda u: op(u)):  # the lambda has no restrict(): batched variant
        plain = conjugate_gradient(operator, v, atol=1e-6)
        reused = conjugate_gradient(operator, v, atol=1e-6, hv0=op(v))
        torch.testing.assert_close(reused.solution, plain.solution, atol=1e-12, rtol=0)
        assert torch.equal(reused.iterations, plain.iterations)


def _hard_block(seed=0):
    g = torch.Generator().manual_seed(seed)
    flow = CPFlow(FlowConfig(dim=4, blocks=1, hidden=8, depth=2, dtype="float64", actnorm=False))
    block = flow.blocks()[0]
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
        block.w1.fill_(3.0)  # a Hessian with a wide spectrum (eigenvalues ~0.3 .. 9)
        block.w0.fill_(-1.0)
    return block, torch.randn(4, 4, generator=g, dtype=torch.float64)


def _flat_grad(out, params):
    gs = torch.autograd.grad(out, params, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(gs, params, strict=True)
        ]
    )


def test_surrogate_gradient_is_unbiased_and_bias_shrinks_with_atol():
    """Paper App. F in small: average of d/dtheta [stop_grad(CG(H, v))^T H v] over many
    Rademacher v equals d/dtheta log det H; loosening atol adds a bias."""
    block, x = _hard_block()
    params = list(block.parameters())
    exact = _flat_grad(block.forward_and_logdet(x)[1].sum(), params)
    R = 4000  # draws per point; Monte-Carlo relative error ~2% here
    xr = x.repeat(R, 1)
    v = rademacher(
        tuple(xr.shape),
        dtype=xr.dtype,
        device=xr.device,
        generator=torch.Generator().manual_seed(0),
    )
    grads = {}
    for atol in (0.3, 0.1, 1e-2, 1e-10):
        _, s, _, _ = block.logdet_surrogate(xr, v, atol=atol)
        grads[atol] = _flat_grad(s.sum() / R, params)
    g0 = grads[1e-10]
    cos = float(g0 @ exact / (g0.norm() * exact.norm()))
    rel = float((g0 - exact).norm() / exact.norm())
    assert cos > 0.99 and rel < 0.05
    # same v for every atol, so differences to the exact-CG estimate are the bias alone
    bias = [float((grads[a] - g0).norm() / exact.norm()) for a in (0.3, 0.1, 1e-2)]
    assert bias[0] > bias[1] > bias[2]
    assert bias[0] > 0.01


def test_training_loss_gradient_matches_exact_nll_gradient():
    """Whole-flow check: the surrogate loss and -mean log_prob(exact) have the same gradient
    in expectation (Rademacher averaged by repeating the batch)."""
    flow = CPFlow(FlowConfig(dim=3, blocks=2, hidden=8, depth=2, dtype="float64", cg_atol=1e-10))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(3, 3, generator=g, dtype=torch.float64)
    params = [p for p in flow.parameters() if p.requires_grad]
    exact = _flat_grad(-flow.log_prob(x).mean(), params)
    loss, stats = flow.training_loss(x.repeat(3000, 1), generator=torch.Generator().manual_seed(0))
    est = _flat_grad(loss, params)
    assert float(est @ exact / (est.norm() * exact.norm())) > 0.99
    assert float((est - exact).norm() / exact.norm()) < 0.05
    assert stats.cg_converged_fraction == 1.0 and stats.cg_iterations_max <= 3


def test_cholesky_logdet_reads_the_upper_triangle_and_falls_back_for_singular_matrices():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(3, 5, 5, generator=g, dtype=torch.float64)
    H = M @ M.mT + 0.5 * torch.eye(5, dtype=torch.float64)
    want = torch.linalg.slogdet(H)[1]
    # the second matrix is singular: its Cholesky factorisation fails
    H[1] = torch.diag(torch.tensor([1.0, 2.0, 0.0, 3.0, 4.0], dtype=torch.float64))
    i, j = torch.tril_indices(5, 5, -1)
    H[:, i, j] = 1e3  # garbage below the diagonal is never read
    got = cholesky_logdet(H)
    torch.testing.assert_close(got[[0, 2]], want[[0, 2]], rtol=0, atol=1e-10)
    # the fallback sums log eigenvalues (clamped at the smallest normal number)
    tiny = torch.finfo(torch.float64).tiny
    expected = torch.log(torch.tensor([1.0, 2.0, tiny, 3.0, 4.0], dtype=torch.float64)).sum()
    torch.testing.assert_close(got[1], expected, rtol=1e-12, atol=0)
