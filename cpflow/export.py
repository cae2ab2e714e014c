"""Autograd-free export wrapper: x -> z as a plain tensor program (torch.onnx.export-able)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from .flow import CPFlow

__all__ = ["ExplicitTransform", "export_onnx"]


class ExplicitTransform(nn.Module):
    """The forward map of a CPFlow (standardisation, ActNorms, block gradients) as an nn.Module.

    Each block's gradient map is computed by the explicit adjoint pass of its ICNN, so tracing
    sees only matmuls and elementwise ops: no autograd inside.
    """

    def __init__(self, flow: CPFlow) -> None:
        super().__init__()
        if flow.context_dim is not None:
            raise ValueError(
                "a conditional flow maps x given a context: the ONNX graph takes x only"
            )
        self.flow = flow

    def forward(self, x: Tensor) -> Tensor:
        h = self.flow.standardization(x)
        for layer in self.flow.layers:
            h = layer(h)
        return h


def export_onnx(flow: CPFlow, path: str | Path, *, dynamo: bool = False, opset: int = 17) -> Path:
    """Write the forward map x (n, d) -> z (n, d) to an ONNX file with a dynamic batch axis.

    ``dynamo=False`` uses the TorchScript tracer (seconds); ``dynamo=True`` the torch.export
    based exporter (slower to run, same graph semantics).
    """
    path = Path(path)
    module = ExplicitTransform(flow).eval()
    ref = flow.standardization.mean
    example = torch.zeros(2, flow.dim, dtype=ref.dtype, device=ref.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with torch.no_grad():
            torch.onnx.export(
                module, (example,), str(path), input_names=["x"], output_names=["z"],
                dynamic_axes={"x": {0: "n"}, "z": {0: "n"}}, opset_version=opset, dynamo=dynamo,
            )  # fmt: skip
    return path
