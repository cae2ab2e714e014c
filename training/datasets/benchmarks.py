"""The tabular benchmarks of the MAF paper (POWER, GAS, HEPMASS, MINIBOONE, BSDS300).

They read a local folder in the ORIGINAL preprocessed layout that the MAF authors distributed
(Papamakarios et al., 2017) and that CP-Flow, FFJORD and most flow papers reuse:

    <data_dir>/power/data.npy               (n, 8) float array
    <data_dir>/gas/ethylene_CO.pickle       pandas DataFrame pickle (needs pandas; see below)
    <data_dir>/hepmass/1000_train.csv       CSV with a header; column 0 is the class label
    <data_dir>/hepmass/1000_test.csv
    <data_dir>/miniboone/data.npy           (n, 43) float array
    <data_dir>/BSDS300/BSDS300.hdf5         HDF5 with datasets train / validation / test (h5py)

and apply the published preprocessing and splits, re-implemented here from their description:

- POWER: shuffle with RandomState(42); drop columns 3 and 1; add uniform noise (0.001 * U to
  the first, 0.01 * U to the second, U to the three sub-meterings, none to the time column);
  test = last 10%, val = last 10% of the rest; standardise with train+val mean/std.
- GAS: drop the Meth, Eth and Time columns; repeatedly drop the first column that has a
  correlation > 0.98 with another one; standardise (pandas' std, ddof=1); test = last 10%,
  val = last 10% of the rest (no shuffle).
- HEPMASS: keep signal rows (label == 1) and drop the label; the test file has one extra
  trailing column that is dropped (MAF's "messed up" quirk: dropped only when present);
  standardise both with the train mean/std (ddof=1); drop each feature whose smallest value
  occurs more than 5 times in train (MAF's rule, which removes the discrete features); val =
  last 10% of train.
- MINIBOONE: test = last 10%, val = last 10% of the rest; standardise with train+val stats.
- BSDS300: the stored splits as they are (already preprocessed 8x8 patches, 63 dims).

``num_samples`` keeps the same fraction of each published split (seeded), for quick runs.
GAS needs pandas to read the pickle (only trusted files: a pickle can run code); install
pandas, or convert once to gas/ethylene_CO.npz with arrays ``values`` and ``columns``.
BSDS300 needs h5py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from training.settings import TrainingSettings

from .arrays import validate_array
from .errors import DatasetError
from .splits import DatasetSplits, make_splits, subsample_splits

__all__ = [
    "BENCHMARK_DATASETS",
    "load_benchmark",
    "preprocess_gas",
    "preprocess_hepmass",
    "preprocess_miniboone",
    "preprocess_power",
]

BENCHMARK_DATASETS: tuple[str, ...] = ("power", "gas", "hepmass", "miniboone", "bsds300")
DATA_DIR_ENV = "CPFLOW_DATA_DIR"

Parts = tuple[np.ndarray, np.ndarray, np.ndarray]


def _tail_split(data: np.ndarray) -> Parts:
    """MAF's split: test = last 10% of rows, val = last 10% of the remainder, train = the rest."""
    n_test = int(0.1 * data.shape[0])
    test = data[data.shape[0] - n_test :]
    rest = data[: data.shape[0] - n_test]
    n_val = int(0.1 * rest.shape[0])
    val = rest[rest.shape[0] - n_val :]
    train = rest[: rest.shape[0] - n_val]
    return train, val, test


def _standardise_with(parts: Parts, ref: np.ndarray, ddof: int) -> Parts:
    mu = ref.mean(axis=0)
    s = ref.std(axis=0, ddof=ddof)
    if np.any(s == 0):
        cols = ", ".join(str(int(c) + 1) for c in np.flatnonzero(s == 0))
        raise DatasetError(f"constant column(s) {cols}: the file is not in the expected format")
    train, val, test = ((p - mu) / s for p in parts)
    return train, val, test


# --------------------------------------------------------------------------- POWER


def preprocess_power(data: np.ndarray) -> Parts:
    """MAF's POWER preprocessing of the (n, 8) ``power/data.npy`` array."""
    if data.ndim != 2 or data.shape[1] != 8:
        raise DatasetError(f"power/data.npy must have shape (n, 8), got {data.shape}")
    rng = np.random.RandomState(42)
    data = np.array(data, dtype=np.float64, copy=True)
    rng.shuffle(data)
    n = data.shape[0]
    data = np.delete(data, 3, axis=1)
    data = np.delete(data, 1, axis=1)
    # drawn in MAF's order: voltage, then gap (global active power), then sub-meterings
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    time_noise = np.zeros((n, 1))
    data = data + np.hstack((gap_noise, voltage_noise, sm_noise, time_noise))
    train, val, test = _tail_split(data)
    return _standardise_with((train, val, test), np.vstack((train, val)), ddof=0)


# --------------------------------------------------------------------------- GAS


def preprocess_gas(values: np.ndarray, columns: list[str]) -> Parts:
    """MAF's GAS preprocessing of the ethylene_CO table (values (n, k), column names)."""
    columns = [str(c) for c in columns]
    if values.ndim != 2 or values.shape[1] != len(columns):
        raise DatasetError(f"gas: {values.shape} values do not match {len(columns)} column names")
    missing = [c for c in ("Meth", "Eth", "Time") if c not in columns]
    if missing:
        raise DatasetError(f"gas: the table lacks column(s) {missing}; is it ethylene_CO?")
    keep = [i for i, c in enumerate(columns) if c not in ("Meth", "Eth", "Time")]
    data = np.asarray(values, dtype=np.float64)[:, keep]
    while True:
        corr = np.corrcoef(data, rowvar=False)
        counts = (corr > 0.98).sum(axis=1)  # includes the diagonal
        over = np.flatnonzero(counts > 1)
        if over.size == 0:
            break
        data = np.delete(data, over[0], axis=1)
    data = (data - data.mean(axis=0)) / data.std(axis=0, ddof=1)
    return _tail_split(data)


def _read_gas(folder: Path) -> tuple[np.ndarray, list[str]]:
    npz = folder / "ethylene_CO.npz"
    pkl = folder / "ethylene_CO.pickle"
    if npz.exists():
        with np.load(npz, allow_pickle=False) as z:
            return np.asarray(z["values"]), [str(c) for c in z["columns"]]
    if not pkl.exists():
        raise DatasetError(f"gas: {pkl} not found")
    try:
        import pandas as pd
    except ImportError as exc:
        raise DatasetError(
            "gas: reading ethylene_CO.pickle needs pandas (pip install pandas), or convert it "
            "once to ethylene_CO.npz with arrays 'values' and 'columns'"
        ) from exc
    frame = pd.read_pickle(pkl)  # the published file is a pickle; load trusted files only
    return frame.to_numpy(dtype=np.float64), [str(c) for c in frame.columns]


# --------------------------------------------------------------------------- HEPMASS


def preprocess_hepmass(train_raw: np.ndarray, test_raw: np.ndarray) -> Parts:
    """MAF's HEPMASS preprocessing of the parsed 1000_train.csv / 1000_test.csv tables."""
    train = train_raw[train_raw[:, 0] == 1][:, 1:]
    test = test_raw[test_raw[:, 0] == 1][:, 1:]
    if test.shape[1] == train.shape[1] + 1:
        test = test[:, :-1]
    if test.shape[1] != train.shape[1]:
        raise DatasetError(
            f"hepmass: train has {train.shape[1]} features but test has {test.shape[1]}"
        )
    if len(train) < 10 or len(test) < 1:
        raise DatasetError("hepmass: too few signal rows (label 1) in the files")
    mu = train.mean(axis=0)
    s = train.std(axis=0, ddof=1)
    train = (train - mu) / s
    test = (test - mu) / s
    keep = []
    for j in range(train.shape[1]):
        _, counts = np.unique(train[:, j], return_counts=True)
        if counts[0] <= 5:  # MAF: the count of the SMALLEST value, not the largest count
            keep.append(j)
    train = train[:, keep]
    test = test[:, keep]
    n_val = int(0.1 * train.shape[0])
    val = train[train.shape[0] - n_val :]
    train = train[: train.shape[0] - n_val]
    return train, val, test


def _read_numeric_csv(path: Path) -> np.ndarray:
    if not path.exists():
        raise DatasetError(f"hepmass: {path} not found")
    try:
        import pandas as pd
    except ImportError:
        pd = None
    try:
        if pd is not None:
            return pd.read_csv(path, index_col=False).to_numpy(dtype=np.float64)
        return np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    except ValueError as exc:  # pandas' parser errors are ValueErrors too
        raise DatasetError(
            f"hepmass: {path.name} is not a numeric CSV with a header ({exc})"
        ) from exc


# --------------------------------------------------------------------------- MINIBOONE


def preprocess_miniboone(data: np.ndarray) -> Parts:
    """MAF's MINIBOONE split and standardisation of ``miniboone/data.npy``."""
    train, val, test = _tail_split(np.asarray(data, dtype=np.float64))
    return _standardise_with((train, val, test), np.vstack((train, val)), ddof=0)


# --------------------------------------------------------------------------- BSDS300


def _read_bsds300(path: Path) -> Parts:
    if not path.exists():
        raise DatasetError(f"bsds300: {path} not found")
    try:
        import h5py
    except ImportError as exc:
        raise DatasetError("bsds300: reading BSDS300.hdf5 needs h5py (pip install h5py)") from exc
    with h5py.File(path, "r") as f:
        missing = [k for k in ("train", "validation", "test") if k not in f]
        if missing:
            raise DatasetError(f"bsds300: {path.name} lacks dataset(s) {missing}")
        return f["train"][()], f["validation"][()], f["test"][()]


# --------------------------------------------------------------------------- entry point


def _resolve_dir(data_dir: str | os.PathLike[str] | None, name: str) -> Path:
    root = data_dir if data_dir is not None else TrainingSettings().data_dir
    if not root:
        raise DatasetError(
            f"{name} is read from a local folder: pass data_dir (cpflow-train --data-dir) or set "
            f"{DATA_DIR_ENV} to the folder holding power/, gas/, hepmass/, miniboone/, BSDS300/"
        )
    path = Path(root)
    if not path.is_dir():
        raise DatasetError(f"data_dir {path} is not a folder")
    return path


def _load_npy(path: Path, name: str) -> np.ndarray:
    if not path.exists():
        raise DatasetError(f"{name}: {path} not found")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DatasetError(f"{name}: {path} is not a numeric .npy file ({exc})") from exc
    return validate_array(arr, min_rows=20, source=f"{name}: {path.name}")


def load_benchmark(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    num_samples: int | None = None,
    seed: int = 0,
) -> DatasetSplits:
    """Load one of BENCHMARK_DATASETS from ``data_dir`` with MAF's preprocessing and splits."""
    key = name.strip().lower()
    if key not in BENCHMARK_DATASETS:
        raise DatasetError(
            f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARK_DATASETS)}"
        )
    root = _resolve_dir(data_dir, key)
    files: list[str]
    if key == "power":
        files = ["power/data.npy"]
        parts = preprocess_power(_load_npy(root / files[0], key))
    elif key == "gas":
        files = ["gas/ethylene_CO.pickle|npz"]
        parts = preprocess_gas(*_read_gas(root / "gas"))
    elif key == "hepmass":
        files = ["hepmass/1000_train.csv", "hepmass/1000_test.csv"]
        parts = preprocess_hepmass(
            _read_numeric_csv(root / files[0]), _read_numeric_csv(root / files[1])
        )
    elif key == "miniboone":
        files = ["miniboone/data.npy"]
        parts = preprocess_miniboone(_load_npy(root / files[0], key))
    else:
        files = ["BSDS300/BSDS300.hdf5"]
        parts = _read_bsds300(root / files[0])
    published = {"train": len(parts[0]), "val": len(parts[1]), "test": len(parts[2])}
    parts = subsample_splits(parts, num_samples, seed, key)
    meta: dict[str, Any] = {
        "kind": "benchmark",
        "source": [str(root / f) for f in files],
        "preprocessing": "MAF (Papamakarios et al. 2017) preprocessing and splits",
        "published_sizes": published,
        "num_samples": num_samples,
        "seed": seed,
    }
    return make_splits(key, *parts, meta=meta)
