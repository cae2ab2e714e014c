"""Plots: every figure is a decodable PNG with the expected content."""

from __future__ import annotations

import io

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from cpflow import CPFlow, FlowConfig
from training.plots import (
    PNG_MAGIC,
    _first_block_view,
    make_plots,
    ot_figure,
    training_curve,
)


def _decode(png: bytes) -> np.ndarray:
    assert png.startswith(PNG_MAGIC)
    img = mpimg.imread(io.BytesIO(png), format="png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    # Not a blank canvas: some pixels differ from the background.
    assert float(img[..., :3].std()) > 0.01
    return img


@pytest.fixture
def flow2d() -> CPFlow:
    flow = CPFlow(FlowConfig(dim=2, blocks=2, hidden=8, depth=2))
    x = torch.randn(256, 2) * torch.tensor([2.0, 0.5]) + 1.0
    flow.set_standardization(x.mean(0), x.std(0))
    flow.initialize(x)
    return flow


def test_make_plots_for_a_2d_model(flow2d) -> None:
    data = np.random.default_rng(0).normal(size=(500, 2)).astype(np.float32)
    history = [
        {"iteration": 0, "val_nll": 3.0, "surrogate": None},
        {"iteration": 10, "val_nll": 2.5, "surrogate": 2.7, "val_nll_stderr": 0.01},
    ]
    plots = make_plots(flow2d, data, history)
    assert set(plots) == {"training_curve.png", "density.png", "potential.png"}
    for png in plots.values():
        _decode(png)


def test_first_block_view_exposes_the_convex_potential(flow2d) -> None:
    pre, block = _first_block_view(flow2d)
    x = torch.randn(64, 2)
    u = pre(x)
    # pre is standardisation then the first ActNorm: applying the rest gives transform().
    h = u
    for layer in list(flow2d.layers)[1:]:
        h = layer(h)
    torch.testing.assert_close(h, flow2d.transform(x), atol=1e-5, rtol=0)
    # The block map is the gradient of the plotted potential (autograd reference).
    u = u.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(block.potential(u).sum(), u)
    torch.testing.assert_close(block(u.detach()), grad, atol=1e-5, rtol=1e-5)


def test_only_the_curve_for_higher_dimensions() -> None:
    flow = CPFlow(FlowConfig(dim=3, blocks=1, hidden=4, depth=1))
    plots = make_plots(flow, np.zeros((10, 3)), [{"iteration": 0, "val_nll": 1.0}])
    assert set(plots) == {"training_curve.png"}
    _decode(plots["training_curve.png"])


def test_ot_figure_and_curve_png() -> None:
    _decode(
        ot_figure(
            {"CP-Flow": [(1.0, 3.0), (0.1, 2.1)], "IAF": [(1.0, 0.5), (0.1, 2.6)]},
            2.0,
            title="d=2",
        )
    )
    _decode(
        training_curve(
            [{"iteration": i, "val_nll": 3 - i / 10, "surrogate": 3.0} for i in range(5)]
        )
    )
