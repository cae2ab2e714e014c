"""An autograd-free, ONNX-traceable exact log-density of a CPFlow, for small dimensions.

ONNX has no Cholesky operator, so the log-determinant of each block's analytic Hessian is
computed by an elimination unrolled over the d columns (O(d) traced steps), which is why this
is offered only up to :data:`LOG_PROB_MAX_DIM`.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn

from cpflow import CPFlow, CPFlowBlock, FlowLayer

__all__ = ["LOG_PROB_MAX_DIM", "ExplicitLogProb", "unrolled_logdet"]

LOG_PROB_MAX_DIM = 16


def unrolled_logdet(H: Tensor) -> Tensor:
    """log det of a batch of SPD matrices (n, d, d) by an unrolled LDL^T elimination.

    Step j takes the pivot p = A[0, 0] of the remaining block A and replaces A by its Schur
    complement A[1:, 1:] - A[1:, 0] A[0, 1:] / p; log det H is the sum of log p (the pivots are
    those of a Cholesky factorisation, squared). The batch is moved to the last axis so that
    every traced step is a contiguous slice or an elementwise product over whole rows of the
    batch: onnxruntime runs those vectorised, where a column-by-column Cholesky over (n, d, d)
    needs strided column reads and products broadcast along the middle axis, several times
    slower at large batches.
    """
    A = H.permute(1, 2, 0)  # (d, d, n)
    pivots = []
    for _ in range(H.shape[-1] - 1):
        pivot, row = A[0, 0], A[0, 1:]
        pivots.append(pivot)
        A = A[1:, 1:] - row.unsqueeze(1) * (row / pivot).unsqueeze(0)
    pivots.append(A[0, 0])
    return torch.log(torch.stack(pivots)).sum(0)


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
                logdet = logdet + unrolled_logdet(hessian)
            else:  # every other layer through the chain interface: coupling blocks (triangular
                # Jacobian), ActNorms (constant log-det), squeezes (a permutation, none)
                chained = cast(FlowLayer, layer)
                h, layer_logdet = chained.forward_and_logdet(h, chained.prepare(None))
                logdet = logdet + layer_logdet
                constant = constant + chained.constant_logdet()
        base = -0.5 * (h * h).sum(-1) - 0.5 * flow.dim * math.log(2.0 * math.pi)
        return base + logdet + constant
