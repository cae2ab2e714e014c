"""Inversion (Algorithm 1) by batched per-sample L-BFGS / Newton: residuals, flags, round trip."""

from __future__ import annotations

import pytest
import torch

from cpflow.inverse import minimize_batched


def _data_with_outliers(flow, n=1000, far=50, seed=0):
    """Points from the data scale, the first ``far`` at 10 standard deviations."""
    g = torch.Generator().manual_seed(seed)
    d = flow.dim
    u = torch.randn(n, d, generator=g)
    u[:far] = 10.0 * torch.nn.functional.normalize(torch.randn(far, d, generator=g), dim=1)
    return flow.standardization.inverse(u.to(flow.config.torch_dtype))


def _harder(flow, seed=0):
    """Push the blocks away from the identity so that the solver has work to do."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in flow.blocks():
            block.w1.fill_(1.0 + torch.rand(1, generator=g).item())
    return flow


@pytest.mark.parametrize("dim", [2, 8, 43])
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float64", 1e-9)])
@pytest.mark.parametrize("solver", ["lbfgs", "newton"])
def test_inverse_residual_and_round_trip(make_flow, dim, dtype, tol, solver):
    if solver == "newton" and dim == 43 and dtype == "float64":
        pytest.skip("covered by float32; keeps the default run short")
    flow = _harder(make_flow(dim, dtype=dtype, blocks=3, hidden=32, depth=3, seed=dim))
    x = _data_with_outliers(flow)
    z = flow.transform(x)
    x_back, info = flow.inverse(z, tol=tol, solver=solver)
    assert info.converged.all(), f"{int((~info.converged).sum())} unconverged"
    assert info.residual.max() <= tol
    # the reported residual is the true one
    torch.testing.assert_close(info.residual, (flow.transform(x_back) - z).abs().amax(-1))
    # x itself: error <= residual / lambda_min(H) (lambda_min >= alpha ~ 1); allow a factor 10
    scale = x.abs().amax(-1, keepdim=True).clamp_min(1.0)
    assert ((x_back - x).abs() / scale).max() <= 10 * tol


def test_refinement_rescues_what_the_first_pass_leaves_above_tol(make_flow):
    """A 3-iteration budget leaves every sample above tol after the L-BFGS pass; the polish
    (Newton on the whole map up to exact_max_dim) finishes them all. Above exact_max_dim it is
    L-BFGS with the same budget: samples may stay above tol, are then flagged, and are never
    made worse."""
    flow = make_flow(8, dtype="float32", blocks=5, hidden=32, depth=3, seed=3)
    with torch.no_grad():
        for block in flow.blocks():
            block.w1.fill_(2.5)  # softplus ~ 2.6: strong blocks
    z = 2.0 * torch.randn(1000, 8, generator=torch.Generator().manual_seed(0))
    first, _ = flow._inverse_pass(z, None, 1e-6, 3, "lbfgs")
    first_residual = (flow.transform(first) - z).abs().amax(-1)
    assert bool((first_residual > 1e-5).all())
    x, info = flow.inverse(z, tol=1e-5, max_iter=3)
    assert info.converged.all() and float(info.residual.max()) <= 1e-5
    torch.testing.assert_close(info.residual, (flow.transform(x) - z).abs().amax(-1))
    flow.config = flow.config.model_copy(update={"exact_max_dim": 4})
    x, info = flow.inverse(z, tol=1e-5, max_iter=3)
    assert bool((info.converged == (info.residual <= 1e-5)).all())
    assert bool((info.residual <= first_residual).all())


def test_unconverged_samples_are_flagged(make_flow):
    flow = _harder(make_flow(5, blocks=2))
    z = 3 * torch.randn(100, 5, dtype=torch.float64)
    x, info = flow.inverse(z, tol=1e-12, max_iter=1)
    assert not info.converged.all()
    res = (flow.transform(x) - z).abs().amax(-1)
    torch.testing.assert_close(info.residual, res)
    # never claims convergence for a sample above tolerance
    assert (info.residual[info.converged] <= 1e-12).all()
    assert (info.residual[~info.converged] > 0).all()


def test_sample_is_distributed_like_base_pushforward(make_flow):
    flow = make_flow(2, dtype="float64", blocks=2)
    x, info = flow.sample(2000, generator=torch.Generator().manual_seed(0))
    assert info.all_converged
    z = flow.transform(x)  # should be ~ N(0, I)
    assert z.mean(0).abs().max() < 0.1 and (z.std(0) - 1).abs().max() < 0.1
    # repeatable with a seeded generator
    x2, _ = flow.sample(2000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, x2)


def test_minimize_batched_quadratics_per_sample_stopping():
    """Independent quadratics with very different conditioning: each stops on its own."""
    g = torch.Generator().manual_seed(0)
    n, d = 64, 6
    Q = torch.linalg.qr(torch.randn(n, d, d, generator=g, dtype=torch.float64))[0]
    ev = torch.logspace(0, 3, d, dtype=torch.float64) ** torch.linspace(0, 1, n)[:, None]
    A = Q @ torch.diag_embed(ev) @ Q.transpose(1, 2)
    b = torch.randn(n, d, generator=g, dtype=torch.float64)

    def fg(x, idx):
        Ax = torch.einsum("nij,nj->ni", A[idx], x)
        return 0.5 * (x * Ax).sum(-1) - (b[idx] * x).sum(-1), Ax - b[idx]

    res = minimize_batched(fg, torch.zeros(n, d, dtype=torch.float64), tol=1e-8, max_iter=500)
    assert res.converged.all()
    torch.testing.assert_close(res.x, torch.linalg.solve(A, b), atol=1e-7, rtol=0)
    # well-conditioned samples need fewer iterations than ill-conditioned ones
    assert res.iterations[0] < res.iterations[-1]


def test_minimize_batched_steps_back_from_non_finite_values():
    """A barrier objective that is +inf outside the unit ball, started near its edge with a
    target outside it: unit steps leave the domain, and the line search must bracket back
    into it (the non-finite branch) and still converge to the analytic minimiser."""
    g = torch.Generator().manual_seed(0)
    n, d = 32, 3
    c = 3.0 * torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64))

    def fg(x, idx):
        r2 = (x * x).sum(-1)
        inside = r2 < 1.0
        val = torch.where(inside, -torch.log((1.0 - r2).clamp_min(1e-300)), float("inf")) + 0.5 * (
            (x - c[idx]) ** 2
        ).sum(-1)
        grad = 2.0 * x / (1.0 - r2).unsqueeze(-1) + (x - c[idx])
        return val, torch.where(inside.unsqueeze(-1), grad, float("nan"))

    res = minimize_batched(fg, 0.9 * c / 3.0, tol=1e-10, max_iter=200)
    assert res.converged.all()
    # the minimiser lies on the ray to c at radius t with 2 t / (1 - t^2) = |c| - t
    t = res.x.norm(dim=-1)
    torch.testing.assert_close(2 * t / (1 - t * t), 3.0 - t, atol=1e-8, rtol=0)
    torch.testing.assert_close(res.x / t.unsqueeze(-1), c / 3.0, atol=1e-8, rtol=0)


def test_a_warm_started_pass_starts_where_the_estimate_is(make_flow):
    """_inverse_pass(start=x) begins each block's solve at the block input of x's forward pass:
    from the true x it has nothing left to do, where a cold pass needs several iterations."""
    flow = _harder(make_flow(6, dtype="float64", blocks=3, hidden=16, seed=5))
    x = _data_with_outliers(flow, n=200, far=10)
    z = flow.transform(x)
    _, cold_iters = flow._inverse_pass(z, None, 1e-9, 100, "lbfgs")
    warm, warm_iters = flow._inverse_pass(z, None, 1e-9, 100, "lbfgs", start=x)
    assert cold_iters >= 3 and warm_iters <= 1
    with torch.no_grad():
        assert float((flow.transform(warm) - z).abs().max()) <= 1e-9
