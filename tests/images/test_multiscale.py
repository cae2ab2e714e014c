"""Multiscale CP-Flow: exact log-likelihood vs an autograd Jacobian, SLQ vs exact, squeeze,
shapes, training surrogate gradient vs the exact NLL gradient, inverse, presets, coupling."""

from __future__ import annotations

import math

import pytest
import torch

from bench.ablation import coupling_parameter_match
from cpflow import CPFlow, FlowConfig
from cpflow.flow import as_flat_images
from cpflow.layers import Squeeze
from tests.helpers.image_flows import random_image_flow
from training.presets import resolve_preset

LOG_2PI = math.log(2 * math.pi)


def _autograd_log_prob(flow: CPFlow, x: torch.Tensor) -> torch.Tensor:
    """Independent reference: log N(T(x)) + log|det dT/dx| with the full autograd Jacobian."""
    out = []
    for row in x.reshape(x.shape[0], -1):
        J = torch.autograd.functional.jacobian(lambda r: flow.transform(r[None])[0], row)
        z = flow.transform(row[None])[0]
        out.append(-0.5 * (z * z).sum() - 0.5 * z.numel() * LOG_2PI + torch.linalg.slogdet(J)[1])
    return torch.stack(out)


def test_squeeze_is_an_invertible_permutation():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float64).reshape(2, 3, 4, 6)
    y = Squeeze()(x)
    assert y.shape == (2, 12, 2, 3)
    assert torch.equal(Squeeze().inverse(y), x)
    assert torch.equal(y.flatten().sort().values, x.flatten().sort().values)
    # channel block c*4 + 2*i + j holds pixel (2h+i, 2w+j) of channel c
    assert float(y[0, 1 * 4 + 2 * 1 + 0, 1, 2]) == float(x[0, 1, 3, 4])


def test_exact_log_prob_matches_autograd_jacobian():
    flow = random_image_flow((1, 4, 4), (1, 1, 1), seed=3)
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    lp = flow.log_prob(x, method="exact")
    ref = _autograd_log_prob(flow, x)
    assert torch.allclose(lp, ref, rtol=1e-9, atol=1e-9)
    # flat rows and images give the same answer; transform keeps the layout
    assert torch.allclose(flow.log_prob(x.reshape(4, 16)), lp)
    assert flow.transform(x).shape == (4, 1, 4, 4)
    assert flow.transform(x.reshape(4, 16)).shape == (4, 16)


def test_slq_agrees_with_exact_within_its_standard_error():
    flow = random_image_flow((2, 4, 4), (1, 1), seed=4)
    x = torch.rand(6, 2, 4, 4, dtype=torch.float64)
    exact = flow.log_prob(x)
    # steps = d: Lanczos is exact per probe, so only the probe (Hutchinson-type) noise remains
    gen = torch.Generator().manual_seed(0)
    est, se = flow.log_prob(
        x, method="slq", probes=32, steps=32, generator=gen, return_stderr=True
    )
    assert bool((se > 0).all())
    assert bool(((est - exact).abs() <= 5 * se + 1e-6).all())


def test_auto_method_is_exact_up_to_exact_max_dim():
    flow = random_image_flow((1, 4, 4), (1,), seed=5, exact_max_dim=16)
    x = torch.rand(3, 16, dtype=torch.float64)
    lp, se = flow.log_prob(x, method="auto", return_stderr=True)
    assert se is None and torch.allclose(lp, flow.log_prob(x, method="exact"))


def test_wrong_shapes_are_rejected_naming_both_shapes():
    flow = random_image_flow((1, 4, 4), (1,))
    with pytest.raises(ValueError, match=r"\[n, 1, 4, 4\].*\[n, 16\].*\[3, 1, 4, 5\]"):
        flow.log_prob(torch.zeros(3, 1, 4, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"got \[2, 15\]"):
        as_flat_images(torch.zeros(2, 15), (1, 4, 4))


def test_inverse_round_trip_and_reported_residual():
    flow = random_image_flow((1, 4, 4), (2, 1), seed=6)
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    z = flow.transform(x)
    xr, info = flow.inverse(z, tol=1e-10)
    assert xr.shape == x.shape
    assert info.all_converged
    assert info.max_residual <= 1e-10
    # the residual reported is the real one
    assert torch.allclose(info.residual, (flow.transform(xr) - z).reshape(5, -1).abs().amax(-1))
    assert float((xr - x).abs().max()) < 1e-8


def test_sample_layouts_and_determinism():
    flow = random_image_flow((1, 4, 4), (1, 1), seed=7)
    a, ia = flow.sample(3, generator=torch.Generator().manual_seed(1))
    b, _ = flow.sample(3, generator=torch.Generator().manual_seed(1), images=True)
    assert a.shape == (3, 16) and b.shape == (3, 1, 4, 4)
    assert torch.equal(a.reshape(3, 1, 4, 4), b)
    assert ia.all_converged


@pytest.mark.slow  # ~20 s of CPU: 6 x 128 CG solves and exact Hessians
def test_training_surrogate_gradient_matches_exact_nll_gradient():
    """Algorithm 2: the surrogate's gradient is unbiased for the NLL gradient. One image is
    repeated N times (independent Rademacher probes per row), so the batch gradient is a Monte
    Carlo mean; CG is run to 1e-12 so the only error is probe noise. Tolerance: 5 standard
    errors estimated from 6 independent batches."""
    flow = random_image_flow((1, 4, 4), (1, 1), seed=8, cg_atol=1e-12)
    x = torch.rand(1, 16, dtype=torch.float64)
    params = [p for n, p in flow.named_parameters() if n.endswith(("w1", "out_weight"))]
    nll = -flow.log_prob(x).mean()
    exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(nll, params)])
    gen = torch.Generator().manual_seed(0)
    ests = []
    for _ in range(6):
        loss, stats = flow.training_loss(x.expand(128, 16), generator=gen)
        ests.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
        assert stats.cg_converged_fraction == 1.0
    ests = torch.stack(ests)
    mean, se = ests.mean(0), ests.std(0) / math.sqrt(len(ests))
    assert bool(((mean - exact).abs() <= 5 * se + 1e-8).all()), (mean, exact, se)
    # and it is not trivially satisfied: the gradient is far from zero in units of its noise
    assert float(exact.abs().max()) > 5 * float(se.max())


def test_config_round_trip_presets_and_state_dict():
    for name, blocks in (("mnist", [8, 8, 8]), ("cifar", [2, 2, 2, 2]), ("digits", [2, 2, 2])):
        cfg = FlowConfig(**resolve_preset(name)[1])
        assert cfg.blocks == blocks
        assert FlowConfig.model_validate_json(cfg.model_dump_json()) == cfg
    mnist = FlowConfig(**resolve_preset("mnist")[1])
    assert mnist.dim == 784 and mnist.potential.hidden == 64 and mnist.potential.depth == 4
    with pytest.raises(ValueError, match="divisible"):
        FlowConfig(input_shape=(1, 6, 6), blocks=[1, 1, 1])
    flow = random_image_flow((1, 4, 4), (1, 1), seed=9)
    clone = CPFlow(flow.config)
    clone.load_state_dict(flow.state_dict())
    x = torch.rand(2, 16, dtype=torch.float64)
    assert torch.equal(clone.log_prob(x), flow.log_prob(x))
    assert clone.initialized


def test_coupling_ablation_is_exact_and_parameter_matched():
    cfg = FlowConfig(input_shape=(1, 4, 4), blocks=[2, 1], hidden=6, depth=2, dtype="float64")
    target = sum(p.numel() for p in CPFlow(cfg).parameters())
    ccfg = coupling_parameter_match(cfg, target)
    coup = CPFlow(ccfg)
    count = sum(p.numel() for p in coup.parameters())
    assert abs(count - target) <= 0.15 * target  # channel counts are whole numbers
    x = torch.rand(3, 16, dtype=torch.float64)
    coup.set_standardization(0.5, 0.3)
    coup.initialize(x)
    with torch.no_grad():
        for p in coup.parameters():
            p.add_(0.2 * torch.randn_like(p))
    assert torch.allclose(coup.log_prob(x), _autograd_log_prob(coup, x), rtol=1e-9, atol=1e-9)
    xr, info = coup.inverse(coup.transform(x))
    assert torch.allclose(xr, x, atol=1e-10) and info.all_converged
    loss, _ = coup.training_loss(x)
    assert torch.allclose(loss, -coup.log_prob(x).mean())
