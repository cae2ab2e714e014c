"""Data sets for training: toy 2-D generators with true densities, scikit-learn's real data,
user files and the MAF tabular benchmarks, all returned as seeded train/val/test splits.

    from training.datasets import load_dataset
    splits = load_dataset("eight_gaussians", num_samples=10_000, seed=0)
    splits = load_dataset("sklearn:wine")
    splits = load_dataset("file:/data/x.csv")
    splits = load_dataset("power", data_dir="/data/maf")
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from model_store.names import did_you_mean

from .arrays import MIN_ROWS, load_array_file, load_table, parse_array_bytes, validate_array
from .benchmarks import BENCHMARK_DATASETS, load_benchmark
from .errors import DatasetError
from .sklearn_sets import SKLEARN_DATASETS, load_sklearn
from .splits import (
    SPLIT_SEED,
    DatasetSplits,
    fit_standardization,
    make_splits,
    random_split,
    splits_sha256,
    subsample_splits,
)
from .tables import Holdout, TableOptions, table_splits
from .toy import TOY_DATASETS, canonical_toy_name, sample_toy, toy_log_density

__all__ = [
    "BENCHMARK_DATASETS",
    "DEFAULT_TOY_SAMPLES",
    "MIN_ROWS",
    "SKLEARN_DATASETS",
    "SPLIT_SEED",
    "TOY_DATASETS",
    "DatasetError",
    "DatasetSplits",
    "TableOptions",
    "available_datasets",
    "fit_standardization",
    "load_array_file",
    "load_dataset",
    "make_splits",
    "parse_array_bytes",
    "random_split",
    "sample_toy",
    "splits_sha256",
    "subsample_splits",
    "toy_log_density",
    "validate_array",
]

DEFAULT_TOY_SAMPLES = 100_000  # total over train/val/test for toy sets


def available_datasets() -> dict[str, list[str]]:
    """Built-in names by kind (file: and benchmark sets also need a path / data_dir)."""
    return {
        "toy": list(TOY_DATASETS),
        "sklearn": [f"sklearn:{k}" for k in SKLEARN_DATASETS],
        "benchmark": list(BENCHMARK_DATASETS),
        "file": ["file:/path/to/data.csv", "file:/path/to/data.npy"],
    }


def _load_toy(key: str, num_samples: int | None, seed: int) -> DatasetSplits:
    total = DEFAULT_TOY_SAMPLES if num_samples is None else int(num_samples)
    if total < 3:
        raise DatasetError(f"num_samples must be at least 3 (one row per split), got {total}")
    data = sample_toy(key, total, seed=seed, dtype=np.float64)
    n_val = max(1, round(0.15 * total))
    n_test = max(1, round(0.15 * total))
    train = data[: total - n_val - n_test]
    val = data[total - n_val - n_test : total - n_test]
    test = data[total - n_test :]
    meta: dict[str, Any] = {
        "kind": "toy",
        "generator": key,
        "true_density": True,  # training.datasets.toy.toy_log_density(key, x) is exact
        "num_samples": total,
        "seed": seed,
    }
    return make_splits(key, train, val, test, meta=meta)


def _holdout_file(path: str | None) -> Holdout | None:
    if path is None:
        return None
    values, header = load_table(path, min_rows=1)
    return Holdout(values, header, f"file:{os.path.abspath(path)}")


def _load_file(
    path: str, num_samples: int | None, seed: int, table: TableOptions | None
) -> DatasetSplits:
    """A user's file, checked (model_store.data_checks) and split as ``table`` says."""
    if not path:
        raise DatasetError("file: needs a path, e.g. file:/data/x.csv")
    options = table or TableOptions()
    data, header = load_table(path, min_rows=MIN_ROWS)
    meta: dict[str, Any] = {
        "kind": "file",
        "source": os.path.abspath(path),
        "rows_total": int(data.shape[0]),
        "num_samples": num_samples,
        "seed": seed,
    }
    splits = table_splits(
        f"file:{os.path.basename(path)}", data, header, options,
        val=_holdout_file(options.val_file), test=_holdout_file(options.test_file), meta=meta,
    )  # fmt: skip
    if num_samples is None:
        return splits
    parts = subsample_splits((splits.train, splits.val, splits.test), num_samples, seed, path)
    return make_splits(splits.name, *parts, meta=splits.meta)


def load_dataset(
    name: str,
    *,
    num_samples: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    table: TableOptions | None = None,
) -> DatasetSplits:
    """Load a data set by name as float32 train/val/test splits with an identity hash.

    Names: a toy set (``eight_gaussians``, ``rings``, ...; FFJORD spellings also work),
    ``sklearn:<wine|breast_cancer|digits|iris|diabetes>``, ``file:<path.csv|.npy>``, or a
    benchmark (``power``, ``gas``, ``hepmass``, ``miniboone``, ``bsds300``; read from
    ``data_dir`` or $CPFLOW_DATA_DIR). A file is checked (model_store.data_checks) and split
    as ``table`` says (dropped columns, hold-out fractions or files). For toy sets ``num_samples`` is the total drawn with
    ``seed`` (default 100,000, split 70/15/15); for the others it keeps that many rows spread
    over the fixed splits (default: all) and ``seed`` picks which.
    """
    if not isinstance(name, str) or not name.strip():
        raise DatasetError("a data set name is required, e.g. 'eight_gaussians' or 'sklearn:wine'")
    if num_samples is not None and (
        isinstance(num_samples, bool) or int(num_samples) != num_samples
    ):
        raise DatasetError(f"num_samples must be a whole number, got {num_samples!r}")
    raw = name.strip()
    lowered = raw.lower()
    if lowered.startswith("file:"):
        # file:/abs/x.csv, file:relative/x.csv, or the URI form file:///abs/x.csv
        path = raw[len("file://") :] if lowered.startswith("file://") else raw[len("file:") :]
        return _load_file(path, num_samples, seed, table)
    if lowered.startswith("sklearn:"):
        return load_sklearn(raw[len("sklearn:") :], num_samples=num_samples, seed=seed)
    if lowered in BENCHMARK_DATASETS:
        return load_benchmark(lowered, data_dir=data_dir, num_samples=num_samples, seed=seed)
    toy = canonical_toy_name(raw)
    if toy is not None:
        return _load_toy(toy, num_samples, seed)
    names = available_datasets()
    known = [*names["toy"], *names["sklearn"], *names["benchmark"]]
    raise DatasetError(
        f"unknown data set {name!r}{did_you_mean(raw, known)}; built-in names: "
        f"{', '.join(names['toy'])}, "
        f"{', '.join(names['sklearn'])}, {', '.join(names['benchmark'])} (with data_dir), "
        "or file:/path/to/data.csv|.npy"
    )
