"""Image data: dequantisation, bits/dim, digits, MNIST idx and CIFAR-10 batch loaders (on small
files written here in those formats), the Gaussian baseline and PNG sample grids."""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from training.images import (
    bits_per_dim,
    dequantize,
    fit_gaussian_bits_per_dim,
    load_cifar10,
    load_digits_images,
    load_image_dataset,
    load_mnist,
    read_cifar_batch,
    read_idx,
    sample_grid_png,
    write_idx,
)


def test_dequantize_stays_in_its_bin():
    v = np.array([[0, 5, 16]])
    y = dequantize(np.repeat(v, 1000, 0), 17, generator=torch.Generator().manual_seed(0))
    lo, hi = torch.as_tensor(v) / 17, (torch.as_tensor(v) + 1) / 17
    assert bool(((y >= lo) & (y < hi)).all())
    # uniform within the bin: mean at the bin centre (3 sigma of a U[0,1)/17 mean over 1000)
    centre = (torch.as_tensor(v[0]) + 0.5) / 17
    assert torch.allclose(y.mean(0).double(), centre.double(), atol=3 * (1 / 17) / math.sqrt(12e3))


def test_bits_per_dim_of_the_uniform_density_is_log2_levels():
    # p(y) = 1 on [0, 1]^d  ->  every level equally likely: exactly log2(K) bits per dimension
    d, k = 64, 17
    assert torch.allclose(bits_per_dim(torch.zeros(3), d, k), torch.full((3,), math.log2(k)))
    # one nat less per image is 1 / (d ln 2) bits/dim more
    one, zero = torch.tensor([-1.0], dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    diff = bits_per_dim(one, d, k) - bits_per_dim(zero, d, k)
    assert math.isclose(float(diff), 1 / (d * math.log(2)), rel_tol=1e-6)


def test_digits_splits():
    s = load_digits_images(seed=0)
    assert s.shape == (1, 8, 8) and s.levels == 17 and s.dim == 64
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    assert s.train.min() >= 0 and s.train.max() == 16
    again = load_digits_images(seed=0)
    assert np.array_equal(s.test, again.test)
    assert load_image_dataset("digits").name == "digits"
    with pytest.raises(ValueError, match="data_dir"):
        load_image_dataset("mnist")


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip_and_mnist_folder(tmp_path, suffix):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", train)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", test)
    assert np.array_equal(read_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}"), test)
    if suffix:
        raw = gzip.decompress((tmp_path / f"t10k-images-idx3-ubyte{suffix}").read_bytes())
        assert raw[:4] == b"\x00\x00\x08\x03"  # the MNIST magic number for ubyte 3-D
    s = load_mnist(tmp_path, val_size=5)
    assert s.levels == 256 and s.shape == (1, 28, 28)
    assert len(s.train) + len(s.val) == 30 and len(s.val) == 3  # at most a tenth of train
    assert np.array_equal(s.test[:, 0], test)
    got = np.sort(np.concatenate([s.train, s.val])[:, 0].reshape(30, -1), axis=0)
    assert np.array_equal(got, np.sort(train.reshape(30, -1), axis=0))


def test_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")
    with pytest.raises(ValueError, match="5"):
        read_idx(tmp_path / "short")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path)


def _cifar_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, n).tolist()
    with open(path, "wb") as fh:  # the original batches are protocol-2 pickles of a dict
        pickle.dump({b"batch_label": b"x", b"labels": labels, b"data": data}, fh, protocol=2)
    return data, labels


def test_cifar_batches_from_a_folder(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    parts = [_cifar_batch(root / f"data_batch_{i}", 4, i)[0] for i in range(1, 6)]
    test_data, test_labels = _cifar_batch(root / "test_batch", 3, 9)
    imgs, labels = read_cifar_batch(root / "test_batch")
    assert imgs.shape == (3, 3, 32, 32) and labels.tolist() == test_labels
    # row layout: 1024 red, then green, then blue, each row-major 32x32
    assert imgs[1, 2, 0, 5] == test_data[1, 2048 + 5]
    s = load_cifar10(tmp_path, val_size=1)
    assert s.shape == (3, 32, 32) and len(s.train) + len(s.val) == 20 and len(s.test) == 3
    got = np.sort(np.concatenate([s.train, s.val]).reshape(20, -1), axis=0)
    assert np.array_equal(got, np.sort(np.concatenate(parts), axis=0))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_loader_refuses_code_in_pickles(tmp_path):
    bad = tmp_path / "data_batch_1"
    bad.write_bytes(pickle.dumps({b"data": _Evil()}, protocol=2))
    with pytest.raises(ValueError, match="refusing"):
        read_cifar_batch(bad)


def test_gaussian_baseline_beats_uniform():
    res = fit_gaussian_bits_per_dim(load_digits_images())
    assert math.isfinite(res["full_covariance_bits_per_dim"])
    # the uniform model scores log2(17) = 4.09 bits/dim: a fitted Gaussian must do better,
    # and full covariance better than diagonal (pixels are strongly correlated)
    assert res["full_covariance_bits_per_dim"] < res["diagonal_bits_per_dim"] < math.log2(17)


def test_sample_grid_png_layout():
    imgs = torch.rand(10, 1, 8, 8)
    png = sample_grid_png(imgs, nrow=4, scale=2)
    img = Image.open(io.BytesIO(png))
    # 4 columns, 3 rows, 1-pixel gaps around each 8x8 tile, then scaled by 2
    assert img.size == ((4 * 9 + 1) * 2, (3 * 9 + 1) * 2)
    rgb = Image.open(io.BytesIO(sample_grid_png(torch.rand(2, 3, 4, 4), scale=1)))
    assert rgb.mode == "RGB"
    with pytest.raises(ValueError, match="images"):
        sample_grid_png(torch.rand(2, 2, 4, 4))
