"""Helpers for the image tests: small multiscale flows pushed away from initialisation."""

from __future__ import annotations

import torch

from cpflow import CPFlow, FlowConfig


def random_image_flow(
    shape: tuple[int, int, int] = (1, 4, 4),
    blocks: tuple[int, ...] = (1, 1),
    *,
    hidden: int = 6,
    depth: int = 2,
    seed: int = 0,
    scale: float = 0.3,
    **kw,
) -> CPFlow:
    """A float64 flow with data-initialised ActNorms and every parameter perturbed, so that no
    block is the identity and every code path contributes."""
    g = torch.Generator().manual_seed(seed)
    cfg = FlowConfig(
        input_shape=shape, blocks=list(blocks), hidden=hidden, depth=depth, dtype="float64", **kw
    )
    flow = CPFlow(cfg)
    x = torch.rand(32, *shape, generator=g, dtype=torch.float64)
    flow.set_standardization(0.4, 0.3)
    flow.initialize(x)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return flow
