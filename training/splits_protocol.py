"""What the trainer and the pipeline read from a data set's splits, whatever class holds them.

Four containers exist (DatasetSplits and its OTSplits, ImageSplits, ConditionalSplits), and
tests pass plain namespaces: they share :class:`Splits` (train, val, test arrays) and differ in
optional capabilities (grey levels, contexts, an OT problem, an identity hash). Those are read
in one place, :func:`splits_info`, into a typed :class:`SplitsInfo`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

__all__ = ["Splits", "SplitsInfo", "splits_info"]


class Splits(Protocol):
    """Train, validation and test arrays: rows (n, d) or integer images (n, C, H, W)."""

    @property
    def train(self) -> np.ndarray: ...

    @property
    def val(self) -> np.ndarray | None: ...

    @property
    def test(self) -> np.ndarray | None: ...


Contexts = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class SplitsInfo:
    """The optional capabilities of a splits object (None / empty when it lacks one)."""

    name: str | None
    sha256: str  # identity of the data ("" when unknown): part of a run's resume fingerprint
    levels: int | None  # grey levels of integer images
    image_shape: tuple[int, ...] | None
    contexts: Contexts | None  # (train, val, test) context rows of p(x | c) data
    context_columns: list[int] | None
    problem: Any  # the OT experiment's Gaussian problem (training.ot.GaussianOTProblem)


def splits_info(splits: Splits) -> SplitsInfo:
    """Read the optional attributes of ``splits`` (the one place that probes for them)."""
    contexts = getattr(splits, "contexts", None)
    levels = getattr(splits, "levels", None)
    columns = getattr(splits, "context_columns", None)
    return SplitsInfo(
        name=getattr(splits, "name", None),
        sha256=str(getattr(splits, "sha256", "")),
        levels=int(levels) if levels else None,
        image_shape=tuple(getattr(splits, "shape", ())) if levels else None,
        contexts=None if contexts is None else (contexts[0], contexts[1], contexts[2]),
        context_columns=None if columns is None else list(columns),
        problem=getattr(splits, "problem", None),
    )
