"""Typed requests and results of the data plane: what every protocol asks and gets back.

A request names the model (and optionally a pinned version) and holds its inputs as the wire
delivered them: nested lists from JSON, or a numpy array from tensors (Open Inference Protocol)
or a CSV file. A result holds tensors in rows, plus the layout the caller wants them in, so
each protocol renders it in its own format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "Calibration",
    "Direction",
    "Inputs",
    "Layout",
    "LogProbRequest",
    "LogProbResult",
    "Method",
    "SampleRequest",
    "SampleResult",
    "Scores",
    "Solver",
    "TableBatch",
    "TableRequest",
    "TransportRequest",
    "TransportResult",
    "calibration_of",
]

Method = Literal["exact", "slq", "auto"]
Direction = Literal["forward", "inverse"]
Layout = Literal["rows", "image"]
Solver = Literal["lbfgs", "newton"]
Inputs = list[Any] | np.ndarray
"""Rows [n, d] or images [n, C, H, W]: nested lists (JSON) or an array (tensors)."""


@dataclass(frozen=True)
class Calibration:
    """What a scoring request asks beyond log p: each row's percentile among the version's
    held-out scores, and with ``outlier_level`` a flag where it is under that level."""

    outlier_level: float | None = None


def calibration_of(percentile: bool | None, outlier_level: float | None) -> Calibration | None:
    """The calibrated scores a request's options ask for (None: log p alone)."""
    if not percentile and outlier_level is None:
        return None
    return Calibration(outlier_level)


@dataclass(frozen=True)
class Scores:
    """A calibrated answer: the percentile (0..1) of each row and, at a level, its flag."""

    percentile: np.ndarray
    outlier: np.ndarray | None
    outlier_level: float | None


@dataclass(frozen=True)
class LogProbRequest:
    """log p(x) (or log p(x | c)) of each input row."""

    model: str
    version: int | None
    inputs: Inputs
    method: Method = "auto"
    probes: int | None = None
    steps: int | None = None
    seed: int | None = None
    context: Any = None
    calibration: Calibration | None = None


@dataclass(frozen=True)
class SampleRequest:
    """``num_samples`` draws, by inverting the flow on seeded normal draws."""

    model: str
    version: int | None
    num_samples: int
    seed: int | None = None
    tolerance: float | None = None
    max_iterations: int | None = None
    solver: Solver | None = None
    layout: Layout | None = None
    context: Any = None


@dataclass(frozen=True)
class TransportRequest:
    """Rows mapped forward (x -> z) or inverse (z -> x)."""

    model: str
    version: int | None
    inputs: Inputs
    direction: Direction = "forward"
    tolerance: float | None = None
    max_iterations: int | None = None
    solver: Solver | None = None
    context: Any = None


@dataclass(frozen=True)
class TableRequest:
    """log p of every row of a table (a CSV file): the model's columns, then its context's."""

    model: str
    version: int | None
    table: np.ndarray
    method: Method = "auto"
    probes: int | None = None
    steps: int | None = None
    seed: int | None = None
    calibration: Calibration | None = None


@dataclass(frozen=True)
class LogProbResult:
    """log p per row (stderr for SLQ), the method resolved and the SLQ seed used."""

    model: str
    version: int
    method: Literal["exact", "slq"]
    log_prob: torch.Tensor
    stderr: torch.Tensor | None
    seed: int | None
    scores: Scores | None = None


@dataclass(frozen=True)
class SampleResult:
    """Samples as (n, d) rows; ``image_shape`` (C, H, W) when the caller wants images."""

    model: str
    version: int
    samples: torch.Tensor
    image_shape: tuple[int, int, int] | None
    max_residual: float | None  # None when unknown or not finite
    converged: bool
    seed: int
    columns: list[str] | None = None  # the samples' column names (None for images)


@dataclass(frozen=True)
class TransportResult:
    """Mapped (n, d) rows; ``image_shape`` when the caller sent images; the inverse's residual."""

    model: str
    version: int
    direction: Direction
    outputs: torch.Tensor
    image_shape: tuple[int, int, int] | None
    max_residual: float | None
    converged: bool | None
    columns: list[str] | None = None  # the outputs' column names (None for images)


@dataclass(frozen=True)
class TableBatch:
    """Rows ``start:stop`` of a table with their log p (and stderr for SLQ)."""

    start: int
    stop: int
    log_prob: torch.Tensor
    stderr: torch.Tensor | None
    scores: Scores | None = None
