"""Optimal transport (paper §5.2): a single block with isotropic standardisation and no ActNorm
is the gradient of one convex potential, hence the Brenier map once it fits the data."""

from __future__ import annotations

import pytest
import torch

from cpflow import CPFlow, FlowConfig


def _jacobian(flow, x):
    return torch.autograd.functional.jacobian(lambda t: flow.transform(t[None])[0], x)


def test_transport_config_is_a_gradient_map():
    cfg = FlowConfig.transport(dim=3, hidden=8, depth=2, dtype="float64")
    assert cfg.is_gradient_map and cfg.blocks == 1 and not cfg.actnorm
    flow = CPFlow(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    flow.set_standardization(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 2.0, 4.0]))
    for x in torch.randn(4, 3, generator=g, dtype=torch.float64):
        J = _jacobian(flow, x)
        torch.testing.assert_close(J, J.T)  # a Hessian: symmetric
        assert torch.linalg.eigvalsh(J).min() > 0  # of a convex potential
    # the default (per-coordinate) standardisation breaks the symmetry: not an OT map
    other = CPFlow(FlowConfig(dim=3, blocks=1, hidden=8, depth=2, actnorm=False, dtype="float64"))
    other.load_state_dict(flow.state_dict())
    other.set_standardization(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 2.0, 4.0]))
    assert not other.config.is_gradient_map
    J = _jacobian(other, torch.randn(3, generator=g, dtype=torch.float64))
    assert (J - J.T).abs().max() > 1e-3


@pytest.mark.slow
def test_gaussian_transport_cost_matches_closed_form_w2():
    """Fit one block to N(mu, Sigma) (fresh samples each step, so no finite-sample bias):
    E|x - T(x)|^2 within 2% of W2^2(N(mu, Sigma), N(0, I)) and KL(data || model) ~ 0."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([1.0, -2.0], dtype=torch.float64)
    sigma = torch.tensor([[2.0, 0.9], [0.9, 1.0]], dtype=torch.float64)
    chol = torch.linalg.cholesky(sigma)

    def draw(n):
        return mu + torch.randn(n, 2, generator=g, dtype=torch.float64) @ chol.T

    ev, V = torch.linalg.eigh(sigma)
    sqrt_sigma = V @ torch.diag(ev.sqrt()) @ V.T
    w2 = float(mu @ mu + torch.trace(sigma) + 2 - 2 * torch.trace(sqrt_sigma))

    flow = CPFlow(FlowConfig.transport(dim=2, hidden=16, depth=2, dtype="float64"))
    init = draw(20_000)
    flow.set_standardization(init.mean(0), init.std(0))
    flow.initialize(init)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 400)
    for _ in range(400):
        loss, _ = flow.training_loss(draw(2000), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    test = draw(20_000)
    truth = torch.distributions.MultivariateNormal(mu, sigma)
    with torch.no_grad():
        kl = float((truth.log_prob(test) - flow.log_prob(test)).mean())
        cost = float(((test - flow.transform(test)) ** 2).sum(-1).mean())
    assert abs(kl) < 0.005
    assert abs(cost - w2) / w2 < 0.02
