"""Calibrated scores: the held-out log-densities a version is published with (its reference
distribution, in the manifest's ``training.calibration``), and where new scores fall among
them.

The reference keeps the sorted held-out scores, or, past :data:`REFERENCE_MAX_VALUES` rows,
that many evenly spaced quantiles of them (type 7: the smallest and the largest score
included). A score's percentile is the reference's continuous empirical CDF at it: linear
between the kept values, 0 below the lowest held-out score and 1 above the highest. For a
fresh row drawn like the held-out rows it is uniform on [0, 1] (up to O(1/rows)), whatever
the model, so ``percentile < level`` flags a ``level`` fraction of in-distribution rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["REFERENCE_MAX_VALUES", "Reference", "reference_summary"]

REFERENCE_MAX_VALUES = 1001
"""Most held-out scores a manifest keeps; past it, quantiles at steps of 1/1000."""


def reference_summary(scores: Any, *, split: str, method: str) -> dict[str, Any] | None:
    """The manifest's record of the held-out ``scores`` (log p per row of ``split``, computed
    with ``method``); None when fewer than two are finite. Non-finite scores are dropped and
    counted."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    finite = np.sort(s[np.isfinite(s)])
    if finite.size < 2:
        return None
    kept = finite
    if finite.size > REFERENCE_MAX_VALUES:
        kept = np.quantile(finite, np.linspace(0.0, 1.0, REFERENCE_MAX_VALUES))
    return {
        "split": split,
        "method": method,
        "rows": int(finite.size),
        "dropped_non_finite": int(s.size - finite.size),
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "quantiles": [float(v) for v in kept],
    }


@dataclass(frozen=True)
class Reference:
    """A version's held-out score distribution, ready to rank new scores."""

    values: np.ndarray  # sorted; the scores themselves or evenly spaced quantiles of them
    levels: np.ndarray  # the CDF at each value: linspace(0, 1, len(values))
    rows: int  # held-out rows the values summarise
    mean: float

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> Reference | None:
        """The reference of a manifest, or None for a version published without one."""
        record = (manifest.get("training") or {}).get("calibration")
        if not isinstance(record, dict) or len(record.get("quantiles") or ()) < 2:
            return None
        values = np.asarray(record["quantiles"], dtype=np.float64)
        return cls(
            values=values,
            levels=np.linspace(0.0, 1.0, values.size),
            rows=int(record.get("rows", values.size)),
            mean=float(record.get("mean", values.mean())),
        )

    def percentiles(self, scores: np.ndarray) -> np.ndarray:
        """Fraction (0..1) of the held-out rows scoring below each of ``scores`` (vectorised:
        one interpolation per batch); NaN stays NaN."""
        return np.interp(scores, self.values, self.levels)
