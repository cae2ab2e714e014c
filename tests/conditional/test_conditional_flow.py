"""CPFlow: exact log p(x|c) vs autograd change of variables, SLQ, inverse, state."""

from __future__ import annotations

import math

import pytest
import torch

from cpflow import CPFlow, FlowConfig


def _flow(kind="augmented", cut=True, dim=3, cdim=2, seed=0):
    torch.manual_seed(seed)
    cfg = FlowConfig(
        dim=dim, context_dim=cdim, blocks=2, hidden=8, depth=2, icnn=kind, cut_context=cut,
        context_hidden=6, dtype="float64",
    )  # fmt: skip
    flow = CPFlow(cfg)
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(32, dim, generator=g, dtype=torch.float64) + 1
    c = 3 * torch.randn(32, cdim, generator=g, dtype=torch.float64) - 1
    flow.set_standardization(x.mean(0), x.std(0), c.mean(0), c.std(0))
    flow.initialize(x, c)
    with torch.no_grad():  # move away from the identity-like start so the test can fail
        for b in flow.blocks():
            b.w1.fill_(1.5)
        for p in flow.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return flow, x, c


@pytest.mark.parametrize("kind,cut", [("augmented", True), ("vanilla", False)])
def test_exact_log_prob_matches_autograd_change_of_variables(kind, cut):
    flow, x, c = _flow(kind, cut)
    lp = flow.log_prob(x[:6], c[:6])
    ref = []
    for i in range(6):
        f = lambda xi, i=i: flow.transform(xi.unsqueeze(0), c[i : i + 1])[0]
        J = torch.autograd.functional.jacobian(f, x[i])
        z = f(x[i])
        logdet = torch.linalg.slogdet(J)[1]
        ref.append(-0.5 * (z * z).sum() - 0.5 * 3 * math.log(2 * math.pi) + logdet)
    # float64, different evaluation order: agreement to ~1e-10
    assert torch.allclose(lp, torch.stack(ref), atol=1e-9)


def test_jacobian_is_symmetric_positive_definite_per_block():
    flow, x, c = _flow()
    h = flow.standardization(x[:4])
    cc = flow._as_context(c[:4], 4)
    block = flow.blocks()[0]
    _, H = block.forward_and_hessian(h, cc)
    assert torch.allclose(H, H.transpose(1, 2), atol=1e-12)
    alpha = float(block.coefficients()[0].detach())
    assert torch.linalg.eigvalsh(H).min() >= alpha - 1e-9  # H >= softplus(w0) I


def test_slq_is_close_to_exact_with_many_probes():
    flow, x, c = _flow()
    exact = flow.log_prob(x, c)
    g = torch.Generator().manual_seed(1)
    est, se = flow.log_prob(x, c, method="slq", probes=256, steps=3, generator=g,
                            return_stderr=True)  # fmt: skip
    # d=3, 3 Lanczos steps: each probe's quadrature is exact; only probe noise remains
    assert ((est - exact).abs() <= 5 * se + 1e-8).all()


def test_inverse_round_trip_per_sample_context_and_broadcast():
    flow, x, c = _flow()
    z = flow.transform(x, c)
    xi, info = flow.inverse(z, c, tol=1e-10)
    assert info.all_converged and info.max_residual <= 1e-10
    assert torch.allclose(xi, x, atol=1e-7)
    x1, info1 = flow.inverse(z[:5], c[:1], tol=1e-10)  # one context row for all
    assert info1.all_converged
    assert torch.allclose(flow.transform(x1, c[:1].expand(5, -1)), z[:5], atol=1e-9)
    s, sinfo = flow.sample(6, c[:1], generator=torch.Generator().manual_seed(0))
    assert s.shape == (6, 3) and sinfo.all_converged


def test_training_loss_gradient_matches_exact_nll_gradient_in_expectation():
    """The surrogate's gradient is unbiased: averaged over many probes it equals the exact one."""
    flow, x, c = _flow(dim=2)
    params = [p for p in flow.parameters() if p.requires_grad]
    nll = -flow.log_prob(x, c).mean()
    g_exact = torch.autograd.grad(nll, params)
    gen = torch.Generator().manual_seed(0)
    reps = 200
    acc = [torch.zeros_like(p) for p in params]
    xs, cs = x.repeat(reps, 1), c.repeat(reps, 1)  # many probes at once, same points
    loss, stats = flow.training_loss(xs, cs, generator=gen)
    g_sur = torch.autograd.grad(loss, params)
    for a, gs in zip(acc, g_sur, strict=True):
        a += gs
    num = sum(float(((a - ge) ** 2).sum()) for a, ge in zip(acc, g_exact, strict=True))
    den = sum(float((ge**2).sum()) for ge in g_exact)
    # d=2: CG is exact after 2 steps; Monte-Carlo error over 200x32 probes ~ a few percent
    assert math.sqrt(num / den) < 0.1
    assert stats.cg_converged_fraction == 1.0


def test_context_validation_and_state_dict_rebuild():
    flow, x, c = _flow()
    with pytest.raises(ValueError, match="context"):
        flow.log_prob(x, c[:, :1])
    with pytest.raises(ValueError, match="context"):
        flow.log_prob(x[:3], c[:2])
    bad = c[:3].clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        flow.log_prob(x[:3], bad)
    cfg = FlowConfig.model_validate_json(flow.config.model_dump_json())
    other = CPFlow(cfg)
    other.load_state_dict(flow.state_dict())
    assert torch.equal(other.log_prob(x, c), flow.log_prob(x, c))
    assert other.initialized
    with pytest.raises(ValueError):
        FlowConfig(dim=2, context_dim=1, icnn="dense")


def test_context_standardisation_is_applied():
    flow, x, c = _flow()
    lp = flow.log_prob(x, c)
    mean = flow.context_standardization.mean.clone()
    flow.set_standardization(
        flow.standardization.mean, flow.standardization.std, mean + 1.0,
        flow.context_standardization.std,
    )  # fmt: skip
    assert torch.allclose(flow.log_prob(x, c + 1.0), lp, atol=1e-12)


@pytest.mark.parametrize(
    "context,code",
    [
        (None, "context_required"),
        ([[1.0, 2.0, 3.0]], "context_shape"),
        ([[1.0, 2.0]] * 3, "context_rows"),
        ([[1.0, float("nan")]], "context_not_finite"),
        ([[1.0, float("inf")]] * 4, "context_not_finite"),
        ([["a", 1.0]], "context_shape"),
    ],
)
def test_check_context_errors_have_codes(context, code):
    from cpflow import ContextError, check_context

    with pytest.raises(ContextError) as err:
        check_context(context, 4, 2)
    assert err.value.code == code


def test_check_context_broadcasts_one_row():
    from cpflow import check_context

    c = check_context([0.5, -1.0], 3, 2)
    assert c.shape == (3, 2) and torch.equal(c[2], torch.tensor([0.5, -1.0], dtype=torch.float64))
    assert check_context([[1.0, 2.0]] * 3, 3, 2).shape == (3, 2)
