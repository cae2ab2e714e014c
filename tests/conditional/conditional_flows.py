"""A small conditional flow p(x | c) for the service tests (/v1 and /v2)."""

from __future__ import annotations

import torch

from cpflow import CPFlow, FlowConfig


def conditional_flow() -> CPFlow:
    """dim 2, context_dim 1, initialised on data and perturbed, so the map depends on c."""
    torch.manual_seed(11)
    cfg = FlowConfig(dim=2, context_dim=1, blocks=1, hidden=8, depth=2)
    flow = CPFlow(cfg)
    c = torch.rand(256, 1) * 2.0 - 1.0
    x = torch.randn(256, 2) * torch.tensor([0.5, 2.0]) + c + 1.0
    flow.set_standardization(x.mean(0), x.std(0), c.mean(0), c.std(0))
    flow.initialize(x, c)
    with torch.no_grad():  # a real (non-identity) map that depends on c
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return flow
