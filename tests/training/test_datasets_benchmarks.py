"""MAF tabular benchmark loaders, run on small files written here in the original formats."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from training.datasets import DatasetError, load_dataset

N_POWER = 500


@pytest.fixture
def root(tmp_path):
    return tmp_path


def _power(root, n: int = N_POWER) -> np.ndarray:
    rng = np.random.default_rng(1)
    # two levels, 0 and 1000, so that the noise within a level can be measured exactly
    data = 1000.0 * rng.integers(0, 2, size=(n, 8))
    data[:, 7] = np.arange(n)  # the time column: row ids, left noise-free by MAF
    (root / "power").mkdir()
    np.save(root / "power" / "data.npy", data)
    return data


def test_power_published_preprocessing(root) -> None:
    raw = _power(root)
    s = load_dataset("power", data_dir=root)
    assert s.sizes == {"train": 405, "val": 45, "test": 50}  # int(0.1 n) test, then int(0.1 rest)
    assert s.dim == 6
    tv = np.concatenate([s.train, s.val]).astype(np.float64)
    assert np.allclose(tv.mean(axis=0), 0, atol=1e-5) and np.allclose(tv.std(axis=0), 1, atol=1e-5)
    out = np.concatenate([s.train, s.val, s.test]).astype(np.float64)
    # the noise-free time column reveals the row order: MAF's RandomState(42) shuffle
    t = out[:, 5]
    ids = np.round((t - t.min()) / (t.max() - t.min()) * (N_POWER - 1)).astype(int)
    assert np.array_equal(ids, np.random.RandomState(42).permutation(N_POWER))
    # columns 1 and 3 are dropped; the rest get U[0, w) noise with MAF's widths
    kept = [0, 2, 4, 5, 6]  # then 7, the time column, checked above
    widths = [0.001, 0.01, 1.0, 1.0, 1.0]
    for j, (col, w) in enumerate(zip(kept, widths, strict=True)):
        x = raw[ids, col]
        hi, lo = out[x == 1000.0, j], out[x == 0.0, j]
        scale = 1000.0 / (hi.mean() - lo.mean())  # the std MAF divided by (noise means cancel)
        spread = max(np.ptp(hi), np.ptp(lo)) * scale
        # float32 storage blurs values by ~3e-5 raw units here
        assert 0.8 * w < spread <= w + 1e-4, (col, spread)


def test_power_wrong_shape(root) -> None:
    (root / "power").mkdir()
    np.save(root / "power" / "data.npy", np.ones((100, 7)))
    with pytest.raises(DatasetError, match=r"shape \(n, 8\)"):
        load_dataset("power", data_dir=root)


def _gas_frame(n: int = 300):
    rng = np.random.default_rng(2)
    cols = ["Time", "Meth", "Eth"] + [f"S{i}" for i in range(1, 17)]
    vals = rng.normal(size=(n, len(cols)))
    vals[:, 4] = 2 * vals[:, 3] + 0.01 * rng.normal(size=n)  # S2 ~ S1 (corr > 0.98)
    vals[:, 7] = vals[:, 6] - 0.01 * rng.normal(size=n)  # S5 ~ S4
    return vals, cols


def _gas_expected(vals, cols):
    # MAF drops the FIRST column of each correlated group: S1 (then S2 is alone), then S4
    keep = [i for i, c in enumerate(cols) if c not in ("Time", "Meth", "Eth", "S1", "S4")]
    x = vals[:, keep]
    return (x - x.mean(axis=0)) / x.std(axis=0, ddof=1)


def test_gas_from_pandas_pickle(root) -> None:
    pd = pytest.importorskip("pandas")
    vals, cols = _gas_frame()
    (root / "gas").mkdir()
    pd.DataFrame(vals, columns=cols).to_pickle(root / "gas" / "ethylene_CO.pickle")
    s = load_dataset("gas", data_dir=root)
    assert s.dim == 14 and s.sizes == {"train": 243, "val": 27, "test": 30}
    want = _gas_expected(vals, cols)
    got = np.concatenate([s.train, s.val, s.test])  # no shuffle: file order
    assert np.allclose(got, want, atol=1e-5)


def test_gas_from_npz_without_pandas(root, monkeypatch) -> None:
    vals, cols = _gas_frame()
    (root / "gas").mkdir()
    np.savez(root / "gas" / "ethylene_CO.npz", values=vals, columns=np.array(cols))
    monkeypatch.setitem(sys.modules, "pandas", None)
    s = load_dataset("gas", data_dir=root)
    assert np.allclose(
        np.concatenate([s.train, s.val, s.test]), _gas_expected(vals, cols), atol=1e-5
    )


def test_gas_errors(root, monkeypatch) -> None:
    (root / "gas").mkdir()
    with pytest.raises(DatasetError, match="ethylene_CO.pickle not found"):
        load_dataset("gas", data_dir=root)
    (root / "gas" / "ethylene_CO.pickle").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(DatasetError, match="needs pandas"):
        load_dataset("gas", data_dir=root)
    np.savez(
        root / "gas" / "ethylene_CO.npz", values=np.ones((30, 2)), columns=np.array(["a", "b"])
    )
    with pytest.raises(DatasetError, match=r"lacks column\(s\) \['Meth', 'Eth', 'Time'\]"):
        load_dataset("gas", data_dir=root)


def _hepmass_table(rng, n: int, extra: bool) -> tuple[str, np.ndarray]:
    label = rng.integers(0, 2, n).astype(float)
    f0 = rng.normal(size=n)
    f1 = rng.normal(size=n)
    f2 = rng.integers(0, 3, n).astype(float)  # discrete: smallest value repeats -> dropped
    f3 = rng.normal(size=n)
    f3[:10] = 50.0  # the LARGEST value repeats: MAF's rule keeps this feature
    mass = rng.choice([500.0, 750.0, 1000.0], n)  # discrete -> dropped
    cols = [label, f0, f1, f2, f3, mass]
    names = ["# label", "f0", "f1", "f2", "f3", "mass"]
    if extra:
        cols.append(rng.normal(size=n))
        names.append("junk")
    table = np.stack(cols, axis=1)
    text = (
        ",".join(names) + "\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in table)
    )
    return text, table


def test_hepmass_published_preprocessing(root) -> None:
    rng = np.random.default_rng(3)
    (root / "hepmass").mkdir()
    tr_text, tr = _hepmass_table(rng, 400, extra=False)
    te_text, te = _hepmass_table(rng, 100, extra=True)
    (root / "hepmass" / "1000_train.csv").write_text(tr_text)
    (root / "hepmass" / "1000_test.csv").write_text(te_text)
    s = load_dataset("hepmass", data_dir=root)
    sig = tr[tr[:, 0] == 1][:, [1, 2, 4]]  # f0, f1, f3 survive
    mu, sd = sig.mean(axis=0), sig.std(axis=0, ddof=1)
    n_val = int(0.1 * len(sig))
    assert s.dim == 3
    assert np.allclose(s.val, ((sig - mu) / sd)[len(sig) - n_val :], atol=1e-5)
    assert np.allclose(s.train, ((sig - mu) / sd)[: len(sig) - n_val], atol=1e-5)
    te_sig = te[te[:, 0] == 1][:, [1, 2, 4]]  # the extra trailing column is gone
    assert np.allclose(s.test, (te_sig - mu) / sd, atol=1e-5)


def test_hepmass_without_pandas_and_mismatch(root, monkeypatch) -> None:
    rng = np.random.default_rng(4)
    (root / "hepmass").mkdir()
    tr_text, _ = _hepmass_table(rng, 200, extra=False)
    te_text, _ = _hepmass_table(rng, 50, extra=False)
    (root / "hepmass" / "1000_train.csv").write_text(tr_text)
    (root / "hepmass" / "1000_test.csv").write_text(te_text)
    with_pd = load_dataset("hepmass", data_dir=root)
    monkeypatch.setitem(sys.modules, "pandas", None)
    assert load_dataset("hepmass", data_dir=root).sha256 == with_pd.sha256
    (root / "hepmass" / "1000_test.csv").write_text("# label,a\n1,2\n1,3\n")
    with pytest.raises(DatasetError, match="train has 5 features but test has 1"):
        load_dataset("hepmass", data_dir=root)
    (root / "hepmass" / "1000_test.csv").unlink()
    with pytest.raises(DatasetError, match="1000_test.csv not found"):
        load_dataset("hepmass", data_dir=root)


def test_miniboone(root) -> None:
    raw = np.random.default_rng(5).normal(3, 2, size=(200, 5))
    (root / "miniboone").mkdir()
    np.save(root / "miniboone" / "data.npy", raw)
    s = load_dataset("miniboone", data_dir=root)
    assert s.sizes == {"train": 162, "val": 18, "test": 20}
    mu, sd = raw[:180].mean(axis=0), raw[:180].std(axis=0)
    assert np.allclose(s.train, (raw[:162] - mu) / sd, atol=1e-5)
    assert np.allclose(s.test, (raw[180:] - mu) / sd, atol=1e-5)
    sub = load_dataset("miniboone", data_dir=root, num_samples=100, seed=1)
    assert sub.sizes == {"train": 81, "val": 9, "test": 10}
    assert sub.meta["published_sizes"] == {"train": 162, "val": 18, "test": 20}


def test_miniboone_nan_file(root) -> None:
    raw = np.ones((50, 3))
    raw[4, 2] = np.nan
    (root / "miniboone").mkdir()
    np.save(root / "miniboone" / "data.npy", raw)
    with pytest.raises(DatasetError, match="NaN at row 5, column 3"):
        load_dataset("miniboone", data_dir=root)


def test_bsds300(root, monkeypatch) -> None:
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(6)
    parts = {"train": (50, 63), "validation": (10, 63), "test": (12, 63)}
    (root / "BSDS300").mkdir()
    path = root / "BSDS300" / "BSDS300.hdf5"
    with h5py.File(path, "w") as f:
        for k, shape in parts.items():
            f.create_dataset(k, data=rng.normal(size=shape))
    s = load_dataset("bsds300", data_dir=root)
    assert s.dim == 63 and s.sizes == {"train": 50, "val": 10, "test": 12}
    with h5py.File(path, "r") as f:
        assert np.allclose(s.val, f["validation"][()], atol=1e-6)
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(DatasetError, match="needs h5py"):
        load_dataset("bsds300", data_dir=root)


def test_bsds300_missing_split(root) -> None:
    h5py = pytest.importorskip("h5py")
    (root / "BSDS300").mkdir()
    with h5py.File(root / "BSDS300" / "BSDS300.hdf5", "w") as f:
        f.create_dataset("train", data=np.ones((5, 63)))
    with pytest.raises(DatasetError, match=r"lacks dataset\(s\) \['validation', 'test'\]"):
        load_dataset("bsds300", data_dir=root)


def test_data_dir_resolution(root, monkeypatch) -> None:
    monkeypatch.delenv("CPFLOW_DATA_DIR", raising=False)
    with pytest.raises(DatasetError, match="pass data_dir.*CPFLOW_DATA_DIR"):
        load_dataset("power")
    with pytest.raises(DatasetError, match="is not a folder"):
        load_dataset("power", data_dir=root / "nope")
    with pytest.raises(DatasetError, match="power/data.npy not found"):
        load_dataset("POWER", data_dir=root)
    with pytest.raises(DatasetError, match="miniboone/data.npy not found"):
        load_dataset("miniboone", data_dir=root)
    with pytest.raises(DatasetError, match="BSDS300.hdf5 not found"):
        load_dataset("bsds300", data_dir=root)
    _power(root)
    monkeypatch.setenv("CPFLOW_DATA_DIR", str(root))
    assert load_dataset("power").dim == 6


@pytest.mark.parametrize("no_pandas", [False, True])
def test_hepmass_text_cell(root, monkeypatch, no_pandas) -> None:
    (root / "hepmass").mkdir()
    bad = "# label,f0\n1,2.0\n1,abc\n"
    (root / "hepmass" / "1000_train.csv").write_text(bad)
    (root / "hepmass" / "1000_test.csv").write_text(bad)
    if no_pandas:
        monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(DatasetError, match="1000_train.csv is not a numeric CSV"):
        load_dataset("hepmass", data_dir=root)


def test_unknown_benchmark_name() -> None:
    from training.datasets.benchmarks import load_benchmark

    with pytest.raises(DatasetError, match="unknown benchmark 'cifar'"):
        load_benchmark("cifar", data_dir=".")
