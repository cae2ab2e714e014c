"""Small flows pushed away from initialisation, shared by the test folders and by the store
tests' subprocess worker.

A fresh CP-Flow block is close to the identity, which would make round-trip and agreement
checks weak: every builder here sets the standardisation and ActNorms from data and perturbs
the parameters, so each block is a real map.
"""

from __future__ import annotations

import numpy as np
import torch

from cpflow import CPFlow, FlowConfig

__all__ = ["actnorm_state", "conditional_flow", "flow_outputs", "make_flow", "random_flow"]


def make_flow(
    dim: int = 2, seed: int = 0, *, blocks: int = 2, hidden: int = 8, dtype: str = "float32"
) -> CPFlow:
    """A small flow fitted to data ~ N(1, diag(0.5 ... 2.0)^2) (a standardisation that makes
    units matter), perturbed after its ActNorms are initialised (so the ICNN terms matter); in
    eval mode."""
    gen = torch.Generator().manual_seed(seed)
    flow = CPFlow(FlowConfig(dim=dim, blocks=blocks, hidden=hidden, depth=2, dtype=dtype))
    tdtype = flow.config.torch_dtype
    scale = torch.linspace(0.5, 2.0, dim, dtype=tdtype)
    data = torch.randn(512, dim, generator=gen, dtype=tdtype) * scale + 1.0
    flow.set_standardization(data.mean(0), data.std(0))
    flow.initialize(data)
    with torch.no_grad():
        for param in flow.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=gen, dtype=param.dtype))
    return flow.eval()


def random_flow(
    dim: int,
    *,
    dtype: str = "float64",
    blocks: int = 3,
    hidden: int = 16,
    depth: int = 3,
    seed: int = 0,
    **kw,
) -> CPFlow:
    """A flow whose parameters are perturbed away from initialisation, with a non-trivial
    standardisation and data-initialised ActNorms (so every code path matters); ``kw`` goes
    to :class:`FlowConfig` (whitening, radial units, potentials ...)."""
    g = torch.Generator().manual_seed(seed)
    flow = CPFlow(
        FlowConfig(dim=dim, blocks=blocks, hidden=hidden, depth=depth, dtype=dtype, **kw)
    )
    tdt = flow.config.torch_dtype
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=tdt))
    if flow.config.standardization == "whiten":
        a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
        scale = a @ a.T / dim + 0.5 * torch.eye(dim, dtype=torch.float64)  # a covariance
    else:
        scale = torch.rand(dim, generator=g) + 0.5
    flow.set_standardization(torch.randn(dim, generator=g), scale)
    flow.initialize(2.0 * torch.randn(256, dim, generator=g, dtype=tdt))
    return flow


def conditional_flow() -> CPFlow:
    """p(x | c) with dim 2, context_dim 1, initialised on data and perturbed, so the map
    depends on c."""
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


def actnorm_state(flow: CPFlow) -> dict[str, torch.Tensor]:
    """Every ActNorm tensor (shift, log_scale, initialized flag), cloned."""
    return {
        key: value.detach().clone()
        for key, value in flow.state_dict().items()
        if any(part in key for part in ("shift", "log_scale", "initialized"))
    }


def flow_outputs(flow: CPFlow, x: torch.Tensor) -> dict[str, np.ndarray]:
    """log_prob (exact), transform and inverse of transform, as numpy arrays: what two
    processes holding the same stored model must agree on."""
    log_prob = flow.log_prob(x, method="exact").detach()
    z = flow.transform(x).detach()
    back, info = flow.inverse(z)
    return {
        "log_prob": log_prob.numpy(),
        "z": z.numpy(),
        "inverse": back.detach().numpy(),
        "residual": info.residual.detach().numpy(),
    }
