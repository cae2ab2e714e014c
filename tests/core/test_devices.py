"""Every path on every available device and dtype (CUDA cases skip on CPU-only machines)."""

from __future__ import annotations

import pytest
import torch

from cpflow import CPFlow, FlowConfig

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_all_paths_follow_module_device_and_dtype(device, dtype):
    flow = CPFlow(FlowConfig(dim=3, blocks=2, hidden=8, depth=2, dtype=dtype))
    tdt = flow.config.torch_dtype
    data = torch.randn(64, 3, dtype=tdt) * 2 + 1
    flow.set_standardization(data.mean(0), data.std(0))
    flow.initialize(data)
    flow.to(device)
    x = data[:16].to(device)
    gen = torch.Generator().manual_seed(0)  # CPU generator is fine for a CUDA model
    lp = flow.log_prob(x)
    lp_slq, se = flow.log_prob(x, method="slq", probes=4, generator=gen, return_stderr=True)
    assert lp.device.type == device and lp.dtype == tdt and se.device.type == device
    assert torch.isfinite(lp).all() and torch.isfinite(lp_slq).all()
    loss, _ = flow.training_loss(x, generator=gen)
    loss.backward()
    assert all(p.grad is None or p.grad.device.type == device for p in flow.parameters())
    tol = 1e-9 if dtype == "float64" else 1e-5
    z = flow.transform(x)
    xb, info = flow.inverse(z, tol=tol)
    assert xb.device.type == device and info.all_converged and info.max_residual <= tol
    s, sinfo = flow.sample(8, generator=gen)
    assert s.shape == (8, 3) and s.device.type == device and sinfo.all_converged
    # CPU inputs are moved to the module's device
    assert flow.log_prob(data[:2]).device.type == device
