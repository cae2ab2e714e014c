"""Conditional data (x, c) for a conditional :class:`cpflow.CPFlow` p(x | c).

* Toy sets with TRUE conditional densities (for floors): ``mog1d`` (a 1-D mixture of two
  Gaussians whose mixing weight is the context c in [0, 1]) and ``banana`` (2-D: x1 ~ N(0, 1),
  x2 | x1 ~ N(c (x1^2 - 1), 0.5^2), the bend set by c in [-1, 1]).
* User arrays (.npy / .csv) split into data and context columns (``context_columns``).

The splits carry ``contexts`` = (train, val, test) rows, which is how the one trainer
(:func:`training.trainer.train`) knows to fit p(x | c).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.datasets.arrays import load_table
from training.datasets.errors import DatasetError
from training.datasets.tables import TableOptions, check_table_values

__all__ = [
    "CONDITIONAL_TOYS",
    "ConditionalSplits",
    "conditional_entropy",
    "conditional_splits",
    "conditional_toy_log_density",
    "is_conditional_source",
    "load_conditional_array",
    "load_conditional_dataset",
    "make_conditional_toy",
    "parse_context_columns",
    "sample_conditional_toy",
    "split_context_columns",
]

CONDITIONAL_TOYS = ("mog1d", "banana")
_MOG_MEANS = (-1.5, 1.5)
_MOG_STD = 0.5
_BANANA_STD = 0.5
_LOG_2PI = math.log(2.0 * math.pi)


def _norm_logpdf(x: np.ndarray, mean: np.ndarray | float, std: float) -> np.ndarray:
    return -0.5 * ((x - mean) / std) ** 2 - math.log(std) - 0.5 * _LOG_2PI


def context_range(name: str) -> tuple[float, float]:
    """Interval the context of a toy set is drawn from (uniformly)."""
    return {"mog1d": (0.0, 1.0), "banana": (-1.0, 1.0)}[_check(name)]


def _check(name: str) -> str:
    if name not in CONDITIONAL_TOYS:
        raise DatasetError(f"unknown conditional toy {name!r}; choose one of {CONDITIONAL_TOYS}")
    return name


def sample_conditional_toy(name: str, c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw one x per context value c (shape (n,) or (n, 1)); returns (n, d)."""
    c = np.asarray(c, dtype=np.float64).reshape(-1)
    n = c.shape[0]
    if _check(name) == "mog1d":
        first = rng.random(n) < c
        mean = np.where(first, _MOG_MEANS[0], _MOG_MEANS[1])
        return (mean + _MOG_STD * rng.standard_normal(n))[:, None]
    x1 = rng.standard_normal(n)
    x2 = c * (x1**2 - 1.0) + _BANANA_STD * rng.standard_normal(n)
    return np.stack([x1, x2], 1)


def conditional_toy_log_density(name: str, x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The true log p(x | c) (closed form), shape (n,)."""
    x = np.asarray(x, dtype=np.float64)
    c = np.broadcast_to(np.asarray(c, dtype=np.float64).reshape(-1), (x.shape[0],))
    if _check(name) == "mog1d":
        a = np.log(np.clip(c, 1e-300, None)) + _norm_logpdf(x[:, 0], _MOG_MEANS[0], _MOG_STD)
        b = np.log(np.clip(1.0 - c, 1e-300, None)) + _norm_logpdf(x[:, 0], _MOG_MEANS[1], _MOG_STD)
        return np.logaddexp(a, b)
    return _norm_logpdf(x[:, 0], 0.0, 1.0) + _norm_logpdf(
        x[:, 1], c * (x[:, 0] ** 2 - 1.0), _BANANA_STD
    )


def conditional_entropy(name: str, c: float) -> float:
    """The true differential entropy H(X | C = c) in nats (quadrature / closed form)."""
    if _check(name) == "banana":  # a shear of independent Gaussians: volume preserving
        return 0.5 * (1.0 + _LOG_2PI) + 0.5 * (1.0 + _LOG_2PI) + math.log(_BANANA_STD)
    grid = np.linspace(-8.0, 8.0, 200_001)
    lp = conditional_toy_log_density(name, grid[:, None], np.full(grid.shape, c))
    p = np.exp(lp)
    integrand = np.where(p > 0, -p * lp, 0.0)
    return float(np.trapezoid(integrand, grid))


@dataclass
class ConditionalSplits:
    """Train / val / test arrays of data x (n, d) and context c (n, k), float32."""

    name: str
    train: np.ndarray
    c_train: np.ndarray
    val: np.ndarray
    c_val: np.ndarray
    test: np.ndarray
    c_test: np.ndarray
    context_columns: list[int] = field(default_factory=list)
    source_sha256: str | None = None  # the uploaded file's digest, when it came from one
    meta: dict[str, Any] = field(default_factory=dict)  # a table's column names, data report

    @property
    def dim(self) -> int:
        return self.train.shape[1]

    @property
    def context_dim(self) -> int:
        return self.c_train.shape[1]

    @property
    def contexts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.c_train, self.c_val, self.c_test

    @property
    def sha256(self) -> str:
        """The source file's digest, else one of every split's data and context (it
        identifies the data in the manifest and the run for resume)."""
        if self.source_sha256:
            return self.source_sha256
        h = hashlib.sha256()
        for a in (self.train, self.c_train, self.val, self.c_val, self.test, self.c_test):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


def _split(name, x, c, seed, context_columns, fractions=(0.8, 0.1)) -> ConditionalSplits:
    n = x.shape[0]
    perm = np.random.default_rng(seed).permutation(n)
    a = round(fractions[0] * n)
    b = a + round(fractions[1] * n)
    if a < 1 or b - a < 1 or n - b < 1:
        raise DatasetError(f"{name}: {n} rows are too few for train / val / test splits")
    idx = perm[:a], perm[a:b], perm[b:]
    xs = [x[i].astype(np.float32) for i in idx]
    cs = [c[i].astype(np.float32) for i in idx]
    return ConditionalSplits(name, xs[0], cs[0], xs[1], cs[1], xs[2], cs[2], context_columns)


def make_conditional_toy(name: str, num_samples: int = 20_000, seed: int = 0) -> ConditionalSplits:
    """A toy conditional set: c ~ U(context_range), x ~ p(x | c); 80/10/10 split."""
    rng = np.random.default_rng(seed)
    lo, hi = context_range(name)
    c = rng.uniform(lo, hi, num_samples)
    x = sample_conditional_toy(name, c, rng)
    return _split(name, x, c[:, None], seed + 1, [])


def parse_context_columns(spec: str | Sequence[int], ncols: int) -> list[int]:
    """Column indices from "3,4" / "-1" / [3, 4] (negatives count from the end), checked."""
    if isinstance(spec, str):
        try:
            items = [int(s) for s in spec.replace(" ", "").split(",") if s]
        except ValueError as exc:
            raise DatasetError(
                f"context columns {spec!r}: give comma-separated integer indices, e.g. '3,4'"
            ) from exc
    else:
        items = [int(s) for s in spec]
    if not items:
        raise DatasetError("name at least one context column")
    cols = []
    for i in items:
        j = i + ncols if i < 0 else i
        if not 0 <= j < ncols:
            raise DatasetError(f"context column {i} is out of range for {ncols} columns")
        cols.append(j)
    if len(set(cols)) != len(cols):
        raise DatasetError("context columns must not repeat")
    if len(cols) >= ncols:
        raise DatasetError("at least one column must remain as data (not context)")
    return cols


def split_context_columns(
    arr: np.ndarray, context_columns: str | Sequence[int]
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(x, c, resolved column indices): the context columns go to c, the others to x."""
    arr = np.asarray(arr)
    cols = parse_context_columns(context_columns, arr.shape[1])
    rest = [j for j in range(arr.shape[1]) if j not in cols]
    return arr[:, rest], arr[:, cols], cols


def conditional_splits(
    arr: np.ndarray,
    context_columns: str | Sequence[int],
    *,
    name: str,
    seed: int = 0,
    sha256: str | None = None,
    columns: list[str] | None = None,
) -> ConditionalSplits:
    """An in-memory table (e.g. an uploaded data set, whose ``sha256`` is recorded; its
    column names ``columns``) checked (model_store.data_checks), split into data and
    context, then into seeded train / val / test parts."""
    checked, names, report = check_table_values(np.asarray(arr), columns, TableOptions(), name)
    x, c, cols = split_context_columns(checked, context_columns)
    splits = _split(name, x, c, seed, cols)
    splits.source_sha256 = sha256
    splits.meta = {
        "columns": [n for j, n in enumerate(names) if j not in cols],
        "context_names": [names[j] for j in cols],
        "data_report": report,
    }
    return splits


def load_conditional_array(
    path: str | Path, context_columns: str | Sequence[int], *, seed: int = 0
) -> ConditionalSplits:
    """A .npy / .csv file (read by training.datasets, with its header) split into data and
    context."""
    values, header = load_table(path)
    return conditional_splits(
        values, context_columns, name=f"file:{path}", seed=seed, columns=header
    )


def is_conditional_source(dataset: str, context_columns: object = None) -> bool:
    """True when ``dataset`` (a CLI / job data set name) means a conditional model: a
    conditional toy, or any data set given together with context columns."""
    return dataset in CONDITIONAL_TOYS or context_columns is not None


def load_conditional_dataset(
    dataset: str,
    context_columns: str | Sequence[int] | None = None,
    *,
    num_samples: int | None = None,
    seed: int = 0,
) -> ConditionalSplits:
    """``mog1d`` / ``banana`` (fixed context, no columns) or ``file:PATH`` with context columns;
    anything else is a DatasetError saying what to give instead."""
    if dataset.startswith("file:"):
        if context_columns is None:
            raise DatasetError("file data needs context columns, e.g. --context-columns 3,4")
        return load_conditional_array(dataset[5:], context_columns, seed=seed)
    if context_columns is None:  # a conditional toy (DatasetError names them otherwise)
        return make_conditional_toy(dataset, num_samples or 20_000, seed)
    if dataset in CONDITIONAL_TOYS:
        raise DatasetError(
            f"{dataset} has its context built in; context columns apply to file data only"
        )
    raise DatasetError(
        f"context columns apply to file data (file:/path.csv|.npy) only, not {dataset!r}; "
        f"drop them, or train a conditional toy ({', '.join(CONDITIONAL_TOYS)})"
    )
