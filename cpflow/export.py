"""Autograd-free export wrapper: x -> z as a plain tensor program (torch.onnx.export-able)."""

from __future__ import annotations

from torch import Tensor, nn

from .flow import CPFlow

__all__ = ["ExplicitTransform"]


class ExplicitTransform(nn.Module):
    """The forward map of a CPFlow (standardisation, ActNorms, block gradients) as an nn.Module.

    Each block's gradient map is computed by the explicit adjoint pass of its ICNN, so tracing
    sees only matmuls and elementwise ops: no autograd inside.
    """

    def __init__(self, flow: CPFlow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor) -> Tensor:
        h = self.flow.standardization(x)
        for layer in self.flow.layers:
            h = layer(h)
        return h
