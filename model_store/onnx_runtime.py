"""onnxruntime sessions over a stored model's exports: forward transport and exact log-prob."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Self

import numpy as np

from . import fsio
from .errors import CorruptModel, StoreError

if TYPE_CHECKING:
    from .store import LoadedModel

__all__ = ["OnnxLogProb", "OnnxTransport"]


class _OnnxSession:
    """An onnxruntime session over one exported graph with input x (n, dim).

    Args:
        path: the ONNX file.
        expected_sha256: if given, the bytes are checked before the session is built.
        device: "cpu", or "cuda[:N]" to use the CUDA provider when onnxruntime has it.
        threads: intra-op threads (None: onnxruntime's default).
        label: (model name, version) for error messages.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        expected_sha256: str | None = None,
        device: str = "cpu",
        threads: int | None = None,
        label: tuple[str, int] | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        data = self.path.read_bytes()
        if expected_sha256 is not None and fsio.sha256_bytes(data) != expected_sha256:
            name, version = label or (self.path.parent.parent.name, -1)
            raise CorruptModel(name, version, self.path.name, "does not match its sha256")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
        providers: list = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in (
            ort.get_available_providers()
        ):
            index = int(str(device).partition(":")[2] or 0)
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        self.session = ort.InferenceSession(data, options, providers=providers)
        (inp,) = self.session.get_inputs()
        self.input_name = inp.name
        self.dim = int(inp.shape[1])
        self.dtype = np.float64 if inp.type == "tensor(double)" else np.float32

    #: LoadedModel attribute prefix of this export (``<prefix>_path``, ``<prefix>_sha256``).
    _export: str = ""
    _missing: str = ""

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, **kwargs: object) -> Self:
        """Session for a model loaded from the store; StoreError if it lacks this export."""
        path = getattr(loaded, f"{cls._export}_path")
        if path is None:
            raise StoreError(f"model {loaded.name!r} version {loaded.version} {cls._missing}")
        return cls(
            path,
            expected_sha256=getattr(loaded, f"{cls._export}_sha256"),
            label=(loaded.name, loaded.version),
            **kwargs,  # type: ignore[arg-type]
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run the graph on a batch (n, dim); returns an array of the model's dtype."""
        values = np.ascontiguousarray(x, dtype=self.dtype)
        if values.ndim != 2 or values.shape[1] != self.dim:
            raise ValueError(f"inputs must have shape (n, {self.dim}), got {values.shape}")
        return self.session.run(None, {self.input_name: values})[0]


class OnnxTransport(_OnnxSession):
    """Forward transport z = f(x) of a stored model through onnxruntime (``model.onnx``)."""

    _export = "onnx"
    _missing = "has no ONNX export; publish it with export_onnx=True"

    def forward(self, x: np.ndarray) -> np.ndarray:
        """z = f(x) for a batch (n, dim)."""
        return self(x)


class OnnxLogProb(_OnnxSession):
    """Exact log p(x) of a stored model through onnxruntime (``log_prob.onnx``, small d)."""

    _export = "onnx_log_prob"
    _missing = (
        "has no ONNX log-prob export (only small dimensions are exported, with export_onnx=True)"
    )
