"""ExplicitTransform: autograd-free forward map that torch.onnx.export can trace."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cpflow.export import ExplicitTransform, export_onnx


def test_explicit_transform_matches_flow(make_flow):
    flow = make_flow(3, dtype="float32")
    x = torch.randn(11, 3)
    with torch.no_grad():
        torch.testing.assert_close(ExplicitTransform(flow)(x), flow.transform(x))


@pytest.mark.parametrize(
    "dynamo,activation",
    [
        (False, "logistic"),
        (False, "gaussian"),
        (False, "laplace"),
        pytest.param(True, "logistic", marks=pytest.mark.slow),  # ~40 s exporter
    ],
)
def test_onnx_export_runs_in_onnxruntime(make_flow, tmp_path, dynamo, activation):
    ort = pytest.importorskip("onnxruntime")
    flow = make_flow(3, dtype="float32", activation=activation, icnn="dense")
    path = export_onnx(flow, tmp_path / "t.onnx", dynamo=dynamo)
    x = 3 * torch.randn(9, 3)
    out = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
    # float32 kernels differ slightly between torch and onnxruntime
    np.testing.assert_allclose(out, flow.transform(x).detach().numpy(), atol=2e-5, rtol=1e-5)
