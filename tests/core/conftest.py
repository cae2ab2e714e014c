"""Fixtures for the core library tests: small random (non-identity) flows."""

from __future__ import annotations

import pytest
import torch

from cpflow import CPFlow, FlowConfig


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
    standardisation and data-initialised ActNorms (so every code path matters)."""
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


@pytest.fixture(autouse=True)
def _one_thread():
    """Core tests use small tensors: one intra-op thread avoids oversubscription on a shared
    2-core machine (10x slower otherwise under load). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_flow():
    return random_flow
