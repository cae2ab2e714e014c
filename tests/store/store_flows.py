"""Small flows for the store tests, shared by the test modules and the subprocess worker."""

from __future__ import annotations

import torch

from cpflow import CPFlow, FlowConfig


def make_flow(dim: int = 2, seed: int = 0, *, blocks: int = 2, hidden: int = 8) -> CPFlow:
    """A small, initialised flow whose weights are far from the identity.

    Standardisation and ActNorm are set from data, then every parameter is perturbed so the
    ICNN terms matter (a fresh block is close to the identity, which would make round-trip
    checks weak).
    """
    gen = torch.Generator().manual_seed(seed)
    flow = CPFlow(FlowConfig(dim=dim, blocks=blocks, hidden=hidden, depth=2))
    data = torch.randn(256, dim, generator=gen) * 2.0 + 3.0
    flow.set_standardization(data.mean(0), data.std(0))
    flow.initialize(data)
    with torch.no_grad():
        for param in flow.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=gen, dtype=param.dtype))
    return flow.eval()


def actnorm_state(flow: CPFlow) -> dict[str, torch.Tensor]:
    """Every ActNorm tensor (shift, log_scale, initialized flag), cloned."""
    return {
        key: value.detach().clone()
        for key, value in flow.state_dict().items()
        if any(part in key for part in ("shift", "log_scale", "initialized"))
    }
