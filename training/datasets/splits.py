"""The train/val/test container, seeded splitting, the data identity hash, standardisation."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import DatasetError

__all__ = [
    "SPLIT_FRACTIONS",
    "SPLIT_SEED",
    "DatasetSplits",
    "fit_standardization",
    "make_splits",
    "random_split",
    "splits_sha256",
    "subsample_splits",
]

SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
# Real data sets are split with this fixed seed, whatever the training seed: every run then sees
# the same test set, so test NLLs of different runs are comparable.
SPLIT_SEED = 20210503


@dataclass(frozen=True)
class DatasetSplits:
    """A data set split three ways: float32 arrays (n, d) plus its identity hash and metadata.

    ``sha256`` identifies the exact numbers (see ``splits_sha256``); ``meta`` says where the data
    came from and how it was preprocessed (JSON-serialisable). The arrays are left writable so
    that torch.as_tensor can share them without a warning; do not modify them in place (the
    hash would no longer describe them).
    """

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """Number of features."""
        return int(self.train.shape[1])

    @property
    def sizes(self) -> dict[str, int]:
        """Rows per split."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def splits_sha256(train: np.ndarray, val: np.ndarray, test: np.ndarray) -> str:
    """SHA-256 of the three splits as little-endian float32 bytes, each preceded by its shape.

    Equal hashes mean the same numbers in the same splits and order; the name is not included.
    """
    h = hashlib.sha256(b"cpflow-dataset-v1\n")
    for label, arr in (("train", train), ("val", val), ("test", test)):
        a = np.ascontiguousarray(arr, dtype="<f4")
        h.update(f"{label}:{a.shape[0]}x{a.shape[1] if a.ndim == 2 else 0}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def make_splits(
    name: str, train: np.ndarray, val: np.ndarray, test: np.ndarray, meta: dict[str, Any]
) -> DatasetSplits:
    """Build a DatasetSplits: cast to float32, check finiteness and shapes, hash, fill meta."""
    parts = []
    for label, arr in (("train", train), ("val", val), ("test", test)):
        a = np.ascontiguousarray(arr, dtype=np.float32)
        if a.ndim != 2:
            raise DatasetError(f"{name}: {label} split must be 2-D, got shape {a.shape}")
        if len(a) == 0:
            raise DatasetError(f"{name}: the {label} split is empty; use more rows")
        if not np.all(np.isfinite(a)):
            raise DatasetError(f"{name}: the {label} split has NaN or inf after preprocessing")
        parts.append(a)
    dims = {a.shape[1] for a in parts}
    if len(dims) != 1:
        raise DatasetError(f"{name}: splits disagree on the number of features: {sorted(dims)}")
    full_meta = dict(meta)
    full_meta.update(
        dim=int(parts[0].shape[1]),
        sizes={"train": len(parts[0]), "val": len(parts[1]), "test": len(parts[2])},
    )
    train, val, test = parts
    return DatasetSplits(name, train, val, test, sha256=splits_sha256(*parts), meta=full_meta)


def random_split(
    data: np.ndarray,
    seed: int = SPLIT_SEED,
    fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle rows with ``seed`` and cut them into train/val/test by ``fractions``.

    Val and test get round(fraction * n) rows but at least one each (none for a fraction of
    0: a part the caller brings from elsewhere); train gets the rest.
    """
    n = len(data)
    n_val = max(1, round(fractions[1] * n)) if fractions[1] else 0
    n_test = max(1, round(fractions[2] * n)) if fractions[2] else 0
    if n - n_val - n_test < 1:
        raise DatasetError(f"{n} rows are too few to split into train, val and test")
    perm = np.random.default_rng(seed).permutation(n)
    test = data[perm[:n_test]]
    val = data[perm[n_test : n_test + n_val]]
    train = data[perm[n_test + n_val :]]
    return train, val, test


def subsample_splits(
    parts: tuple[np.ndarray, np.ndarray, np.ndarray], num_samples: int | None, seed: int, name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep about ``num_samples`` rows in total, the same fraction of each split (seeded).

    Rows keep their order; None keeps everything. Asking for more rows than exist is an error.
    """
    if num_samples is None:
        return parts
    total = sum(len(p) for p in parts)
    if int(num_samples) < 3:
        raise DatasetError(
            f"num_samples must be at least 3 (one row per split), got {num_samples}"
        )
    if num_samples > total:
        raise DatasetError(
            f"num_samples={num_samples} exceeds the {total} rows of {name}; "
            f"use at most {total} or leave it unset"
        )
    rng = np.random.default_rng(seed)
    frac = num_samples / total
    out = []
    for p in parts:
        k = min(len(p), max(1, round(frac * len(p))))
        idx = np.sort(rng.choice(len(p), size=k, replace=False))
        out.append(p[idx])
    return out[0], out[1], out[2]


def fit_standardization(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (float64, ddof=0) of the TRAIN split only.

    A constant feature has no density a flow could fit, so it is an error naming the column.
    """
    x = np.asarray(train, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise DatasetError(
            f"standardisation needs a 2-D train split with >= 2 rows, got {x.shape}"
        )
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    scale = np.maximum(np.abs(mean), 1.0)
    const = np.flatnonzero(std <= 1e-12 * scale)
    if const.size:
        cols = ", ".join(str(int(c) + 1) for c in const[:10])
        raise DatasetError(
            f"feature column(s) {cols} are constant in the training split; a density model "
            "cannot fit a constant feature: drop those columns"
        )
    return mean, std
