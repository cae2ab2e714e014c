"""scikit-learn's bundled real data sets (no download), features only, with a fixed split.

Discrete columns are dequantised: a column whose values all lie on a lattice q * Z (q the
largest power of ten <= 1 that divides every value, e.g. 1 for digits' pixel counts, 0.1 for
iris' centimetres) AND that repeats values gets uniform noise U(-q/2, q/2). This turns the
probability of each recorded value into a density over its cell (so NLLs stay bounded) and
changes continuous-looking columns by at most half their recording resolution. The noise is
drawn once from a fixed seed, so the data set (and its hash) is the same on every call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import DatasetError
from .splits import SPLIT_SEED, DatasetSplits, make_splits, random_split, subsample_splits

__all__ = ["SKLEARN_DATASETS", "dequantize", "lattice_step", "load_sklearn"]


def _loaders() -> dict[str, Callable[[], np.ndarray]]:
    from sklearn import datasets as skd

    return {
        "wine": lambda: skd.load_wine().data,
        "breast_cancer": lambda: skd.load_breast_cancer().data,
        "digits": lambda: skd.load_digits().data,
        "iris": lambda: skd.load_iris().data,
        # raw (unscaled) values, so that their recording resolution can be detected
        "diabetes": lambda: skd.load_diabetes(scaled=False).data,
    }


SKLEARN_DATASETS: tuple[str, ...] = ("wine", "breast_cancer", "digits", "iris", "diabetes")
_DEQUANT_SEED = SPLIT_SEED + 1


def lattice_step(column: np.ndarray, finest: int = -6) -> float | None:
    """Largest q = 10^k (k from 0 down to ``finest``) with every value an integer multiple of q."""
    col = np.asarray(column, dtype=np.float64)
    for k in range(0, finest - 1, -1):
        q = 10.0**k
        r = col / q
        if np.all(np.abs(r - np.round(r)) <= 1e-6):  # decimal text parsed to float64
            return q
    return None


def dequantize(x: np.ndarray, seed: int = _DEQUANT_SEED) -> tuple[np.ndarray, list[float | None]]:
    """Add U(-q/2, q/2) noise to each discrete column (see module docstring); return steps used."""
    rng = np.random.default_rng(seed)
    out = np.array(x, dtype=np.float64, copy=True)
    steps: list[float | None] = []
    for j in range(out.shape[1]):
        col = out[:, j]
        q = lattice_step(col)
        if q is not None and np.unique(col).size < col.size:
            out[:, j] = col + q * (rng.uniform(size=col.size) - 0.5)
            steps.append(q)
        else:
            steps.append(None)
    return out, steps


def load_sklearn(name: str, *, num_samples: int | None = None, seed: int = 0) -> DatasetSplits:
    """Load ``sklearn:<name>`` features, dequantise discrete columns, split 70/15/15 (fixed seed)."""
    key = name.strip().lower()
    if key not in SKLEARN_DATASETS:
        raise DatasetError(
            f"unknown scikit-learn data set {name!r}; choose one of "
            + ", ".join(f"sklearn:{k}" for k in SKLEARN_DATASETS)
        )
    raw = np.asarray(_loaders()[key](), dtype=np.float64)
    data, steps = dequantize(raw)
    parts = subsample_splits(random_split(data), num_samples, seed, f"sklearn:{key}")
    meta: dict[str, Any] = {
        "kind": "sklearn",
        "source": f"sklearn.datasets.load_{key}" + ("(scaled=False)" if key == "diabetes" else ""),
        "rows_total": int(raw.shape[0]),
        "split": {"fractions": [0.7, 0.15, 0.15], "seed": SPLIT_SEED},
        "dequantization": {
            "noise": "uniform(-q/2, q/2) on columns on a lattice q*Z with repeated values",
            "columns": {str(j): q for j, q in enumerate(steps) if q is not None},
            "seed": _DEQUANT_SEED,
        },
        "num_samples": num_samples,
        "seed": seed,
    }
    return make_splits(f"sklearn:{key}", *parts, meta=meta)
