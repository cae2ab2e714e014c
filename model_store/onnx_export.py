"""ONNX export of the forward transport x -> z, with a parity check against torch.

The exported graph is ``cpflow.export.ExplicitTransform(flow)``: the gradient map written as an
explicit computation (no autograd inside), so torch.onnx can trace it. Parity is measured with
onnxruntime against ``flow.transform`` (the autograd path) on random points in the data's units.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from cpflow import CPFlow

__all__ = [
    "DEFAULT_OPSET",
    "PARITY_POINTS",
    "PARITY_TOLERANCE",
    "OnnxExport",
    "export_forward_transport",
    "parity_points",
]

DEFAULT_OPSET = 18
PARITY_POINTS = 10_000
PARITY_TOLERANCE = 1e-5  # max |onnx - torch| over all outputs, float32 (issue 4)
_CHUNK = 2048

log = logging.getLogger(__name__)


@dataclass
class OnnxExport:
    """The serialised model (None when export or parity failed) and the manifest's onnx entry."""

    data: bytes | None
    info: dict[str, Any] = field(default_factory=dict)


def parity_points(flow: CPFlow, count: int = PARITY_POINTS, seed: int = 0) -> np.ndarray:
    """Random points in the data's units: mean + std * N(0, I) of the flow's standardisation."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((count, flow.dim))
    standardization = getattr(flow, "standardization", None)
    mean = getattr(standardization, "mean", None)
    std = getattr(standardization, "std", None)
    if mean is not None and std is not None:
        z = z * std.detach().cpu().double().numpy() + mean.detach().cpu().double().numpy()
    dtype = np.float64 if flow.config.dtype == "float64" else np.float32
    return z.astype(dtype)


def _torch_transform(flow: CPFlow, x: np.ndarray) -> np.ndarray:
    """Reference outputs from the library's own (autograd) transform, in chunks."""
    import torch

    outs = []
    for start in range(0, len(x), _CHUNK):
        batch = torch.from_numpy(x[start : start + _CHUNK])
        outs.append(flow.transform(batch).detach().cpu().numpy())
    return np.concatenate(outs)


def _onnx_transform(data: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: x[s : s + _CHUNK]})[0] for s in range(0, len(x), _CHUNK)]
    )


def _export_torchscript(module: Any, example: Any, opset: int) -> bytes:
    """The TorchScript exporter: deprecated since torch 2.9 but ~100x faster to run."""
    import torch

    buffer = io.BytesIO()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buffer,
            dynamo=False,
            input_names=["x"],
            output_names=["z"],
            dynamic_axes={"x": {0: "batch"}, "z": {0: "batch"}},
            opset_version=opset,
        )
    return buffer.getvalue()


def _export_dynamo(module: Any, example: Any, opset: int) -> bytes:
    """The torch.export-based exporter (torch's default since 2.9); tens of seconds per model."""
    import torch

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            None,
            dynamo=True,
            input_names=["x"],
            output_names=["z"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            opset_version=opset,
            verbose=False,
        )
    return program.model_proto.SerializeToString()


_EXPORTERS = {"torchscript": _export_torchscript, "dynamo": _export_dynamo}


def _export_bytes(module: Any, example: Any, opset: int, exporter: str) -> tuple[bytes, str]:
    """Trace ``module`` to ONNX bytes with a dynamic batch axis; returns (bytes, exporter used).

    "auto" tries the fast TorchScript exporter first and falls back to dynamo.
    """
    if exporter != "auto":
        return _EXPORTERS[exporter](module, example, opset), exporter
    try:
        return _export_torchscript(module, example, opset), "torchscript"
    except Exception as exc:  # noqa: BLE001 - fall back to the other exporter
        log.info("TorchScript ONNX export failed (%s); trying the dynamo exporter", exc)
    return _export_dynamo(module, example, opset), "dynamo"


def export_forward_transport(
    flow: CPFlow,
    *,
    opset: int = DEFAULT_OPSET,
    points: int = PARITY_POINTS,
    tolerance: float = PARITY_TOLERANCE,
    seed: int = 0,
    exporter: Literal["auto", "torchscript", "dynamo"] = "auto",
) -> OnnxExport:
    """Export x -> z and check it against torch; never raises for an export problem.

    ``exporter``: "auto" (TorchScript, else dynamo), or force one. A failed export or parity
    check returns ``data=None`` with the reason in ``info`` so that
    publishing a trained model does not fail because of ONNX.
    """
    import onnxruntime
    import torch

    info: dict[str, Any] = {
        "exported": False,
        "graph": "forward_transport",
        "input": "x",
        "output": "z",
        "opset": opset,
        "dtype": flow.config.dtype,
        "parity_points": points,
        "parity_tolerance": tolerance,
        "parity_max_abs_diff": None,
        "torch_version": torch.__version__,
        "onnxruntime_version": onnxruntime.__version__,
    }
    try:
        from cpflow.export import ExplicitTransform
    except ImportError as exc:
        info["reason"] = f"cpflow.export.ExplicitTransform is not available ({exc})"
        return OnnxExport(None, info)

    reference = copy.deepcopy(flow).cpu().eval()
    x = parity_points(reference, points, seed)
    try:
        module = ExplicitTransform(reference).eval()
        with torch.no_grad():
            data, used = _export_bytes(module, torch.from_numpy(x[:4]), opset, exporter)
        info["exporter"] = used
        got = _onnx_transform(data, x)
    except Exception as exc:  # noqa: BLE001 - report, do not fail the publish
        info["reason"] = f"export failed: {type(exc).__name__}: {exc}"
        log.warning("ONNX export failed: %s", info["reason"])
        return OnnxExport(None, info)
    want = _torch_transform(reference, x)
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    info["parity_max_abs_diff"] = diff if np.isfinite(diff) else None
    if not (np.isfinite(diff) and diff <= tolerance):
        info["reason"] = f"parity check failed: max |onnx - torch| = {diff:.3g} > {tolerance:g}"
        log.warning("ONNX export dropped: %s", info["reason"])
        return OnnxExport(None, info)
    info["exported"] = True
    return OnnxExport(data, info)
