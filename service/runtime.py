"""Which runtime answers each operation of a served model: onnxruntime or torch.

Exact log-density and forward transport run on onnxruntime sessions over the store's exports
when the model ships them (the CUDA provider on a CUDA device where onnxruntime has it); SLQ,
inverse transport, sampling, conditional models and anything without a usable export run on
torch. ``CPFLOW_RUNTIME`` chooses:

- ``auto``: the exports a version ships, on the batch sizes where onnxruntime is faster
  (timed against torch when the version loads: :func:`calibrate`); torch for the rest.
- ``onnx``: onnxruntime on every batch size where a model has an export, and a version
  published without exports gets them derived (exported and parity-checked as at publish)
  into this replica's cache folder when it loads; the published version is never rewritten.
- ``torch``: torch for everything.

A damaged, missing or failing export never fails a request: it is logged as a warning and
torch answers.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from model_store.manifest import ONNX_FILE, ONNX_LOG_PROB_FILE, manifest_flow_config

__all__ = [
    "ONNX_OPERATIONS",
    "OPERATIONS",
    "PROBE_ROWS",
    "RuntimeMode",
    "Runtimes",
    "calibrate",
    "open_runtimes",
    "planned_runtimes",
]

log = logging.getLogger("cpflow.runtime")

RuntimeMode = Literal["auto", "torch", "onnx"]
#: Every operation a model answers, in the order the model description lists them.
OPERATIONS = ("log_prob_exact", "log_prob_slq", "transport_forward", "transport_inverse", "sample")
#: Operation -> the export file that can answer it.
ONNX_OPERATIONS = {"log_prob_exact": ONNX_LOG_PROB_FILE, "transport_forward": ONNX_FILE}

Session = Callable[[np.ndarray], np.ndarray]


#: Batch sizes timed on both runtimes when a version loads under ``auto`` (capped so that a
#: probe holds at most _PROBE_VALUES numbers: image models have thousands of columns).
PROBE_ROWS = (1, 32, 256, 1024)
_PROBE_VALUES = 1 << 16
_PROBE_REPEATS = 3


@dataclass
class Runtimes:
    """The onnxruntime sessions of one served model, by operation; the rest is torch's.

    ``max_rows[op]``: the largest pass onnxruntime answers (torch above: on large batches its
    batched kernels win, see :func:`calibrate`); absent: no limit.
    """

    sessions: dict[str, Session] = field(default_factory=dict)
    max_rows: dict[str, int] = field(default_factory=dict)

    def of(self, operation: str, rows: int = 1) -> str:
        """ "onnx" or "torch": the runtime answering a pass of ``rows`` rows of ``operation``."""
        if operation not in self.sessions or rows > self.max_rows.get(operation, rows):
            return "torch"
        return "onnx"

    def describe(self) -> dict[str, str]:
        """Operation -> runtime for the model's description: "torch", "onnx", or "onnx<=N"
        (onnxruntime up to N rows per pass, torch above)."""
        out = {}
        for op in OPERATIONS:
            limit = self.max_rows.get(op)
            out[op] = f"onnx<={limit}" if op in self.sessions and limit else self.of(op)
        return out

    def drop(self, operation: str, reason: str, model: tuple[str, int]) -> None:
        """Stop using an export that failed at run time: torch answers from now on."""
        if self.sessions.pop(operation, None) is not None:
            log.warning(
                "ONNX export failed; torch answers from now on",
                extra={"model": model[0], "version": model[1], "operation": operation,
                       "error": reason},
            )  # fmt: skip


def _best_ms(fn: Callable[[], object]) -> float:
    times = []
    for _ in range(_PROBE_REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def _faster_up_to(
    session: Session,
    torch_pass: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    dtype: torch.dtype,
    timings: dict[int, tuple[float, float]],
) -> int | None:
    """The largest probe batch where ``session`` beats ``torch_pass`` (0: not even one row;
    None: every probe), recording rows -> (onnx ms, torch ms) in ``timings``."""
    gen = torch.Generator().manual_seed(0)
    faster_up_to = 0
    for rows in PROBE_ROWS:
        if rows * dim > _PROBE_VALUES and faster_up_to:
            return faster_up_to
        x = torch.randn(rows, dim, generator=gen, dtype=dtype)
        values = x.numpy()
        session(values)  # first runs allocate
        with torch.inference_mode():
            torch_pass(x)
            onnx_ms = _best_ms(partial(session, values))
            torch_ms = _best_ms(partial(torch_pass, x))
        timings[rows] = (round(onnx_ms, 3), round(torch_ms, 3))
        if onnx_ms > torch_ms:
            return faster_up_to
        faster_up_to = rows
    return None


def calibrate(
    runtimes: Runtimes,
    torch_passes: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    dim: int,
    dtype: torch.dtype,
    model: tuple[str, int] = ("", 0),
) -> dict[str, dict[int, tuple[float, float]]]:
    """Time each session against its torch pass on :data:`PROBE_ROWS` batches and keep
    onnxruntime up to the largest batch where it is faster (its per-call cost is far lower;
    torch's batched kernels win on large batches, at d = 16 from ~32 rows). A session slower
    even on one row, or failing, is dropped. Returns rows -> (onnx ms, torch ms) per
    operation."""
    timings: dict[str, dict[int, tuple[float, float]]] = {}
    for operation, session in list(runtimes.sessions.items()):
        timings[operation] = {}
        try:
            limit = _faster_up_to(session, torch_passes[operation], dim, dtype, timings[operation])
        except Exception as exc:  # noqa: BLE001 - a failing export must not stop serving
            runtimes.drop(operation, f"{type(exc).__name__}: {exc}", model)
            continue
        if limit == 0:
            del runtimes.sessions[operation]
        elif limit is not None:
            runtimes.max_rows[operation] = limit
    return timings


def _conditional(manifest: dict[str, Any]) -> bool:
    return getattr(manifest_flow_config(manifest), "context_dim", None) is not None


def planned_runtimes(manifest: dict[str, Any], mode: RuntimeMode) -> dict[str, str]:
    """Operation -> runtime a version would get if loaded now (from its manifest and mode)."""
    from model_store.explicit_logprob import LOG_PROB_MAX_DIM

    shipped = set(manifest.get("files") or {})
    exportable = {ONNX_FILE: True, ONNX_LOG_PROB_FILE: manifest.get("dim", 0) <= LOG_PROB_MAX_DIM}

    def plan(operation: str) -> str:
        filename = ONNX_OPERATIONS.get(operation)
        if filename is None or mode == "torch" or _conditional(manifest):
            return "torch"
        if filename in shipped or (mode == "onnx" and exportable[filename]):
            return "onnx"
        return "torch"

    return {op: plan(op) for op in OPERATIONS}


def _derived(loaded: Any, filename: str, cache_dir: Path) -> Path | None:
    """The export ``filename`` of a version published without it, made once into
    ``cache_dir/onnx/<name>/<version>/`` (parity-checked as at publish); None if the exporter
    cannot make it (the reason is logged)."""
    from model_store import onnx_export

    path = cache_dir / "onnx" / loaded.name / str(loaded.version) / filename
    if path.is_file():
        return path
    export = (
        onnx_export.export_log_prob
        if filename == ONNX_LOG_PROB_FILE
        else onnx_export.export_forward_transport
    )
    made = export(loaded.flow)
    if made.data is None:
        log.info(
            "no ONNX export derived; torch answers",
            extra={"model": loaded.name, "version": loaded.version, "file": filename,
                   "reason": made.info.get("reason")},
        )  # fmt: skip
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{filename}.{os.getpid()}-{uuid.uuid4().hex}")
    tmp.write_bytes(made.data)
    os.replace(tmp, path)  # readers see the whole file or none
    log.info(
        "ONNX export derived into the local cache",
        extra={"model": loaded.name, "version": loaded.version, "file": str(path)},
    )
    return path


def _session(
    loaded: Any, operation: str, mode: RuntimeMode, device: str, threads: int, cache_dir: Path
) -> Session | None:
    """The session answering ``operation``: over the shipped export, else (mode onnx) over one
    derived into the cache; None when there is neither."""
    from model_store.onnx_runtime import OnnxLogProb, OnnxTransport

    filename = ONNX_OPERATIONS[operation]
    kind = OnnxLogProb if filename == ONNX_LOG_PROB_FILE else OnnxTransport
    shipped = loaded.onnx_log_prob_path if kind is OnnxLogProb else loaded.onnx_path
    if shipped is not None:
        return kind.from_loaded(loaded, device=device, threads=threads)
    derived = _derived(loaded, filename, cache_dir) if mode == "onnx" else None
    if derived is None:
        return None
    return kind(derived, device=device, threads=threads, label=(loaded.name, loaded.version))


def open_runtimes(
    loaded: Any, mode: RuntimeMode, *, device: str, threads: int, cache_dir: Path
) -> Runtimes:
    """onnxruntime sessions for the exports of ``loaded`` (a store's LoadedModel) under
    ``mode``; an export that is absent or cannot be opened leaves its operation to torch."""
    runtimes = Runtimes()
    if mode == "torch" or loaded.flow.context_dim is not None:
        return runtimes
    for operation in ONNX_OPERATIONS:
        try:
            session = _session(loaded, operation, mode, device, threads, cache_dir)
        except Exception as exc:  # noqa: BLE001 - a bad export must not stop serving
            log.warning(
                "ONNX export unusable; torch answers",
                extra={"model": loaded.name, "version": loaded.version, "operation": operation,
                       "error": f"{type(exc).__name__}: {exc}"},
            )  # fmt: skip
            continue
        if session is not None:
            runtimes.sessions[operation] = session
    return runtimes
