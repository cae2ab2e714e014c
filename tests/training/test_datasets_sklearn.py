"""scikit-learn's bundled data sets by name, the fixed split, dequantisation, load_dataset errors
and the standardisation helper."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree
from sklearn import datasets as skd

from training.datasets import (
    SKLEARN_DATASETS,
    DatasetError,
    available_datasets,
    fit_standardization,
    load_dataset,
    splits_sha256,
)
from training.datasets.sklearn_sets import dequantize, lattice_step

_RAW = {
    "wine": lambda: skd.load_wine().data,
    "breast_cancer": lambda: skd.load_breast_cancer().data,
    "digits": lambda: skd.load_digits().data,
    "iris": lambda: skd.load_iris().data,
    "diabetes": lambda: skd.load_diabetes(scaled=False).data,
}


@pytest.mark.parametrize("key", SKLEARN_DATASETS)
def test_sklearn_set_is_a_fixed_partition_of_the_features(key) -> None:
    raw = _RAW[key]()
    s = load_dataset(f"sklearn:{key}")
    n = raw.shape[0]
    assert s.dim == raw.shape[1]
    assert sum(s.sizes.values()) == n
    assert s.sizes["test"] == round(0.15 * n) and s.sizes["val"] == round(0.15 * n)
    assert s.train.dtype == np.float32
    # fixed split and fixed dequantisation noise: the seed does not change the data
    assert load_dataset(f"sklearn:{key}", seed=9).sha256 == s.sha256
    # every row is a raw row moved by at most half its column's recording step q: rounding the
    # jittered columns to q recovers the raw row, which must exist in the raw data
    every = np.concatenate([s.train, s.val, s.test]).astype(np.float64)
    steps = s.meta["dequantization"]["columns"]
    recovered = every.copy()
    for j, q in steps.items():
        col = int(j)
        recovered[:, col] = np.round(every[:, col] / q) * q
        assert np.all(np.abs(every[:, col] - recovered[:, col]) <= 0.5 * q * (1 + 1e-5) + 1e-4)
    scale = np.maximum(1.0, np.abs(raw).max(axis=0))
    _, idx = cKDTree(raw / scale).query(recovered / scale)
    # float32 storage can push a value across a cell edge (then rounding is one step off)
    slack = 1e-6 * scale + np.array([steps.get(str(j), 0.0) for j in range(raw.shape[1])])
    assert np.all(np.abs(recovered - raw[idx]) <= slack)


def test_digits_are_dequantised_with_unit_noise() -> None:
    s = load_dataset("sklearn:digits")
    every = np.concatenate([s.train, s.val, s.test]).astype(np.float64)
    assert set(s.meta["dequantization"]["columns"].values()) == {1.0}
    frac = every - np.round(every)
    assert np.all(np.abs(frac) <= 0.5 + 1e-6)
    # the noise is uniform: its spread is 1/sqrt(12), not zero (continuous data)
    assert abs(frac.std() - 1 / np.sqrt(12)) < 0.01
    assert np.unique(every[:, 0]).size == every.shape[0]  # no ties remain


def test_continuous_columns_are_left_alone() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 2))
    out, steps = dequantize(x)
    assert steps == [None, None] and np.array_equal(out, x)
    assert lattice_step(np.array([0.5, 1.25, 3.0])) == 0.01
    assert lattice_step(np.array([3.0, 7.0, 12.0])) == 1.0
    assert lattice_step(np.array([np.pi, 1.0])) is None


def test_subsampling_keeps_split_membership() -> None:
    full = load_dataset("sklearn:breast_cancer")
    sub = load_dataset("sklearn:breast_cancer", num_samples=100, seed=1)
    assert abs(sum(sub.sizes.values()) - 100) <= 2
    test_rows = {tuple(r) for r in full.test}
    assert all(tuple(r) in test_rows for r in sub.test)
    assert load_dataset("sklearn:breast_cancer", num_samples=100, seed=2).sha256 != sub.sha256
    with pytest.raises(DatasetError, match="exceeds the 178 rows of sklearn:wine"):
        load_dataset("sklearn:wine", num_samples=1000)


def test_name_errors() -> None:
    with pytest.raises(DatasetError, match="unknown scikit-learn data set 'boston'"):
        load_dataset("sklearn:boston")
    with pytest.raises(DatasetError, match="unknown data set 'mnist'.*sklearn:wine.*file:"):
        load_dataset("mnist")
    with pytest.raises(DatasetError, match="name is required"):
        load_dataset("  ")
    with pytest.raises(DatasetError, match="whole number"):
        load_dataset("rings", num_samples=10.5)
    assert "sklearn:digits" in available_datasets()["sklearn"]


def test_fit_standardization_uses_train_only() -> None:
    s = load_dataset("sklearn:wine")
    mean, std = fit_standardization(s.train)
    assert mean.dtype == np.float64 and mean.shape == (13,)
    assert np.allclose(mean, s.train.astype(np.float64).mean(axis=0))
    assert np.allclose(std, s.train.astype(np.float64).std(axis=0))
    z = (s.train - mean) / std
    assert np.allclose(z.mean(axis=0), 0, atol=1e-6) and np.allclose(z.std(axis=0), 1, atol=1e-6)
    x = np.random.default_rng(0).normal(size=(50, 3))
    x[:, 1] = 4.0
    with pytest.raises(DatasetError, match=r"column\(s\) 2 are constant"):
        fit_standardization(x)
    with pytest.raises(DatasetError, match="2-D train split"):
        fit_standardization(np.ones(5))


def test_sha256_identifies_numbers_and_split_boundaries() -> None:
    a = np.arange(12, dtype=np.float32).reshape(6, 2)
    h = splits_sha256(a[:4], a[4:5], a[5:])
    assert h == splits_sha256(a[:4].astype(np.float64), a[4:5], a[5:])
    assert h != splits_sha256(a[:3], a[3:5], a[5:])  # same rows, other split
    b = a.copy()
    b[0, 0] += 1e-3
    assert h != splits_sha256(b[:4], b[4:5], b[5:])
