"""ExplicitTransform: autograd-free forward map that torch.onnx.export can trace."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cpflow.export import ExplicitTransform


def test_explicit_transform_matches_flow(make_flow):
    flow = make_flow(3, dtype="float32")
    x = torch.randn(11, 3)
    with torch.no_grad():
        torch.testing.assert_close(ExplicitTransform(flow)(x), flow.transform(x))


def test_onnx_export_runs_in_onnxruntime(make_flow, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    flow = make_flow(3, dtype="float32")
    path = tmp_path / "t.onnx"
    torch.onnx.export(
        ExplicitTransform(flow).eval(),
        (torch.randn(5, 3),),
        str(path),
        input_names=["x"],
        output_names=["z"],
        dynamic_axes={"x": {0: "n"}, "z": {0: "n"}},
    )
    x = torch.randn(9, 3)
    out = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
    # float32 kernels differ slightly between torch and onnxruntime
    np.testing.assert_allclose(out, flow.transform(x).detach().numpy(), atol=1e-5)
