"""An autograd-free, ONNX-traceable exact log-density of a CPFlow, for small dimensions.

ONNX has no Cholesky operator, so the log-determinant of each block's analytic Hessian is
computed by a Cholesky factorisation unrolled over the d columns (O(d) traced steps), which is
why this is offered only up to :data:`LOG_PROB_MAX_DIM`.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn

from cpflow import CPFlow, CPFlowBlock, FlowLayer

__all__ = ["LOG_PROB_MAX_DIM", "ExplicitLogProb", "unrolled_cholesky_logdet"]

LOG_PROB_MAX_DIM = 16


def unrolled_cholesky_logdet(H: Tensor) -> Tensor:
    """log det of a batch of SPD matrices (n, d, d) by a column-by-column Cholesky.

    Column j of L is (H[:, j] - L[:, :j] L[j, :j]^T) / sqrt(pivot_j), and log det H is the sum
    of log pivot_j. Only slicing, products, sums, sqrt and log: every step exports to ONNX.
    """
    d = H.shape[-1]
    rows = torch.arange(d, device=H.device)
    columns: list[Tensor] = []
    logdet = torch.zeros(H.shape[:-2], dtype=H.dtype, device=H.device)
    for j in range(d):
        v = H[..., :, j]
        if columns:
            done = torch.stack(columns, dim=-1)  # (n, d, j)
            v = v - (done * done[..., j : j + 1, :]).sum(-1)
        pivot = v[..., j]
        logdet = logdet + torch.log(pivot)
        below = (rows >= j).to(H.dtype)  # keep L lower triangular
        columns.append(v / torch.sqrt(pivot).unsqueeze(-1) * below)
    return logdet


class ExplicitLogProb(nn.Module):
    """x -> log p(x) (n,), the same quantity as ``flow.log_prob(x, method="exact")``."""

    def __init__(self, flow: CPFlow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor) -> Tensor:
        flow = self.flow
        h = flow.standardization(x)
        constant = flow.standardization.logdet()
        logdet = torch.zeros(h.shape[:-1], dtype=h.dtype, device=h.device)
        for layer in flow.layers:
            if isinstance(layer, CPFlowBlock):
                h, hessian = layer.forward_and_hessian(h)
                logdet = logdet + unrolled_cholesky_logdet(hessian)
            else:  # every other layer through the chain interface: coupling blocks (triangular
                # Jacobian), ActNorms (constant log-det), squeezes (a permutation, none)
                chained = cast(FlowLayer, layer)
                h, layer_logdet = chained.forward_and_logdet(h, chained.prepare(None))
                logdet = logdet + layer_logdet
                constant = constant + chained.constant_logdet()
        base = -0.5 * (h * h).sum(-1) - 0.5 * flow.dim * math.log(2.0 * math.pi)
        return base + logdet + constant
