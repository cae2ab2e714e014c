"""Core contract tests: exact log_prob vs autograd, inverse round trip, state_dict round trip."""

from __future__ import annotations

import math

import pytest
import torch

from cpflow import CPFlow, FlowConfig, InverseInfo, TrainStats


def _autograd_log_prob(flow: CPFlow, x: torch.Tensor) -> torch.Tensor:
    """Change of variables with the Jacobian of transform() taken by autograd (independent)."""
    out = []
    d = flow.dim
    for i in range(x.shape[0]):
        J = torch.autograd.functional.jacobian(lambda t: flow.transform(t[None])[0], x[i])
        z = flow.transform(x[i : i + 1])[0]
        base = -0.5 * (z * z).sum() - 0.5 * d * math.log(2 * math.pi)
        out.append(base + torch.linalg.slogdet(J)[1])
    return torch.stack(out)


@pytest.mark.parametrize("dim", [1, 2, 5, 16])
@pytest.mark.parametrize("icnn", ["augmented", "vanilla", "dense"])
def test_exact_log_prob_matches_autograd_jacobian(make_flow, dim, icnn):
    # float64: the analytic Hessian and autograd agree to round-off (~1e-13); 1e-8 per the issue.
    flow = make_flow(dim, icnn=icnn, seed=dim)
    x = 1.5 * torch.randn(5, dim, dtype=torch.float64)
    lp = flow.log_prob(x, method="exact")
    assert lp.shape == (5,)
    torch.testing.assert_close(lp, _autograd_log_prob(flow, x), atol=1e-8, rtol=0)


@pytest.mark.parametrize("dim", [1, 3])
def test_whitened_flow_log_prob_matches_autograd_jacobian(make_flow, dim):
    # The full-covariance standardisation is part of transform(): autograd sees L^-1 too.
    flow = make_flow(dim, standardization="whiten", seed=7)
    x = 1.5 * torch.randn(5, dim, dtype=torch.float64)
    torch.testing.assert_close(flow.log_prob(x), _autograd_log_prob(flow, x), atol=1e-8, rtol=0)
    z = flow.transform(x)
    back, info = flow.inverse(z)
    assert info.all_converged
    torch.testing.assert_close(back, x, atol=1e-7, rtol=0)


@pytest.mark.parametrize("activation", ["logistic", "gaussian", "laplace"])
def test_exact_log_prob_activations(make_flow, activation):
    flow = make_flow(3, activation=activation, zero_offset=True, symmetric_first=False)
    x = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(flow.log_prob(x), _autograd_log_prob(flow, x), atol=1e-8, rtol=0)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-9), ("float32", 1e-5)])
def test_inverse_round_trip(make_flow, dtype, tol):
    flow = make_flow(4, dtype=dtype)
    x = torch.randn(200, 4, dtype=flow.config.torch_dtype) * 2.0
    z = flow.transform(x)
    x_back, info = flow.inverse(z, tol=tol)
    assert isinstance(info, InverseInfo)
    assert info.converged.all()
    assert info.residual.max() <= tol
    # inverse(transform(x)) == x: residual/min-eigenvalue bound, generous factor 100
    assert (x_back - x).abs().max() <= 100 * tol * 10


def test_state_dict_round_trip(make_flow):
    flow = make_flow(3)
    sd = flow.state_dict()
    assert any(k.endswith("initialized") for k in sd)
    assert "standardization.mean" in sd and "standardization.std" in sd
    cfg = FlowConfig.model_validate_json(flow.config.model_dump_json())
    clone = CPFlow(cfg)
    assert not clone.initialized
    clone.load_state_dict(sd)
    assert clone.initialized
    x = torch.randn(7, 3, dtype=torch.float64)
    torch.testing.assert_close(clone.log_prob(x), flow.log_prob(x), atol=0, rtol=0)
    torch.testing.assert_close(clone.transform(x), flow.transform(x), atol=0, rtol=0)


def test_training_loss_backward(make_flow):
    flow = make_flow(3)
    x = torch.randn(16, 3, dtype=torch.float64)
    loss, stats = flow.training_loss(x, generator=torch.Generator().manual_seed(1))
    assert isinstance(stats, TrainStats)
    loss.backward()
    grads = [p.grad for p in flow.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert 1 <= stats.cg_iterations_max <= 3  # at most d iterations


def test_sample_shapes_and_info(make_flow):
    flow = make_flow(2, dtype="float32")
    x, info = flow.sample(50, generator=torch.Generator().manual_seed(0))
    assert x.shape == (50, 2) and x.dtype == torch.float32
    assert info.converged.all() and info.max_residual <= 1e-5


def test_slq_returns_stderr(make_flow):
    flow = make_flow(6)
    x = torch.randn(5, 6, dtype=torch.float64)
    _lp, se = flow.log_prob(
        x,
        method="slq",
        probes=8,
        steps=6,
        return_stderr=True,
        generator=torch.Generator().manual_seed(0),
    )
    assert se is not None and se.shape == (5,) and (se > 0).all()
    _, se_exact = flow.log_prob(x, method="exact", return_stderr=True)
    assert se_exact is None


def test_config_json_round_trip_and_validation():
    cfg = FlowConfig(dim=3, icnn="dense", activation="laplace", dtype="float64")
    assert FlowConfig.model_validate_json(cfg.model_dump_json()) == cfg
    with pytest.raises(ValueError):
        FlowConfig(dim=0)
    with pytest.raises(ValueError):
        FlowConfig(dim=2, icnn="bogus")
    with pytest.raises(ValueError):
        FlowConfig(dim=2, unknown_field=1)


@torch.no_grad()
def test_init_gain_sets_the_icnn_weight_and_small_gains_start_near_the_identity():
    x = torch.randn(64, 3, dtype=torch.float64)
    default = CPFlow(FlowConfig(dim=3, dtype="float64"))
    assert float(default.blocks()[0].coefficients()[1]) == pytest.approx(math.log(2.0))
    flow = CPFlow(FlowConfig(dim=3, dtype="float64", init_gain=1e-4, actnorm=False))
    assert float(flow.blocks()[0].coefficients()[1]) == pytest.approx(1e-4, rel=1e-5)  # f32 w1
    flow.initialize(x)
    # f(x) = x + 1e-4 * grad G(x) per block: the whole map moves points by O(1e-4) only.
    assert float((flow.transform(x) - x).abs().max()) < 1e-2
    assert float((default.transform(x) - x).abs().max()) > 1e-2
    with pytest.raises(ValueError):
        FlowConfig(dim=3, init_gain=0.0)
