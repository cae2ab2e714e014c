"""Positive linear layer, ActNorm (data init stored as a buffer) and the standardisation layer."""

from __future__ import annotations

import math

import pytest
import torch

from cpflow import CPFlow, FlowConfig
from cpflow.layers import ActNorm, PositiveLinear, Standardization


def test_positive_linear_nonnegative_for_any_weights():
    layer = PositiveLinear(7, 5).double()
    with torch.no_grad():
        layer.weight.copy_(50 * torch.randn(5, 7, dtype=torch.float64))
    w = layer.effective_weight()
    assert (w >= 0).all()
    torch.testing.assert_close(w, torch.nn.functional.softplus(layer.weight) / 7)


def test_actnorm_data_init_and_positive_scale():
    x = 3.0 + 2.0 * torch.randn(500, 4, dtype=torch.float64)
    norm = ActNorm(4).double()
    assert not bool(norm.initialized)
    norm.initialize(x)
    y = norm(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(y.std(0, unbiased=False), torch.ones(4, dtype=torch.float64))
    assert bool(norm.initialized) and (norm.scale() > 0).all()
    torch.testing.assert_close(norm.inverse(y), x)
    assert "initialized" in norm.state_dict()


def test_loaded_flow_never_reinitialises():
    cfg = FlowConfig(dim=3, blocks=2, hidden=8, depth=2, dtype="float64")
    flow = CPFlow(cfg)
    flow.initialize(5 + torch.randn(64, 3, dtype=torch.float64))
    sd = {k: v.clone() for k, v in flow.state_dict().items()}
    clone = CPFlow(cfg)
    clone.load_state_dict(sd)
    assert clone.initialized
    # using the model (log_prob, training loss) on a very different batch changes nothing
    x = -7 + 3 * torch.randn(32, 3, dtype=torch.float64)
    clone.log_prob(x)
    clone.training_loss(x)
    for k, v in clone.state_dict().items():
        torch.testing.assert_close(v, sd[k], atol=0, rtol=0)


def test_standardization_layer_and_validation():
    layer = Standardization(3).double()
    layer.set(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 8.0]))
    x = torch.randn(10, 3, dtype=torch.float64)
    torch.testing.assert_close(layer.inverse(layer(x)), x)
    assert float(layer.logdet()) == pytest.approx(-(torch.log(torch.tensor(64.0))).item())
    layer.set(torch.zeros(3), torch.tensor([2.0, 4.0, 8.0]), isotropic=True)
    torch.testing.assert_close(layer.std, torch.full((3,), 4.0, dtype=torch.float64))
    with pytest.raises(ValueError):
        layer.set(torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError):
        layer.set(torch.zeros(2), torch.ones(2))


def test_whitening_standardization_is_the_gaussian_change_of_variables():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 3, generator=g, dtype=torch.float64)
    cov = a @ a.T + 0.1 * torch.eye(3, dtype=torch.float64)
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    layer = Standardization(3, full=True).double()
    layer.set_covariance(mean, cov)
    x = torch.randn(200, 3, generator=g, dtype=torch.float64)
    z = layer(x)
    torch.testing.assert_close(layer.inverse(z), x)
    # N(0, I) pulled back through the layer is N(mean, cov) (closed form via scipy-free torch).
    gauss = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    base = -0.5 * (z * z).sum(-1) - 1.5 * math.log(2 * math.pi)
    torch.testing.assert_close(base + layer.logdet(), gauss.log_prob(x), atol=1e-10, rtol=0)
    torch.testing.assert_close(layer.std, cov.diagonal().sqrt())
    with pytest.raises(ValueError, match="use set_covariance"):
        layer.set(mean, torch.ones(3))
    with pytest.raises(ValueError, match="not positive definite"):
        layer.set_covariance(mean, torch.ones(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="use set\\(mean, std\\)"):
        Standardization(3).set_covariance(mean, cov)
