"""A non-trivial random 2-D flow is a normalised density: exp(log_prob) integrates to 1."""

from __future__ import annotations

import pytest
import torch

from cpflow import CPFlow, FlowConfig
from cpflow.layers import softplus_inv


@pytest.mark.parametrize(
    "icnn,activation,radial",
    [("augmented", "logistic", 0), ("dense", "laplace", 0), ("augmented", "gaussian", 8)],
)
def test_density_integrates_to_one_on_a_grid(icnn, activation, radial):
    g = torch.Generator().manual_seed(1)
    cfg = FlowConfig(
        dim=2,
        blocks=3,
        hidden=16,
        depth=3,
        icnn=icnn,
        activation=activation,
        radial_units=radial,
        dtype="float64",
    )
    flow = CPFlow(cfg)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64))
        for block in flow.blocks():
            block.w1.fill_(1.5)  # clearly non-Gaussian
            if block.radial is not None:  # radial steps as strong as the ICNN term
                block.radial.raw_weight.fill_(softplus_inv(0.05))
    flow.set_standardization(torch.tensor([0.5, -1.0]), torch.tensor([1.5, 0.7]))
    # grid wide enough that the mass outside is negligible (checked below), fine enough that
    # the midpoint rule error is far below 0.005
    lo, hi, m = -10.0, 10.0, 251
    axis = torch.linspace(lo, hi, m, dtype=torch.float64)
    h = (hi - lo) / (m - 1)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    with torch.no_grad():
        dens = torch.exp(flow.log_prob(pts))
    total = float(dens.sum() * h * h)
    assert abs(total - 1.0) < 0.005
    # not a near-Gaussian: the log-density is far from a quadratic fit
    border = dens.reshape(m, m)[[0, -1]].max()
    assert float(border) < 1e-8
    # the flow is not an affine map (a Gaussian would also integrate to one)
    z = flow.transform(pts[::97])
    A = torch.linalg.lstsq(torch.cat([pts[::97], torch.ones(len(z), 1, dtype=z.dtype)], 1), z)
    resid = z - torch.cat([pts[::97], torch.ones(len(z), 1, dtype=z.dtype)], 1) @ A.solution
    assert resid.abs().max() > 0.1
