r"""Image data for multiscale CP-Flows: loaders, dequantisation, bits/dim, a small trainer.

* Integer images with K grey levels v in {0..K-1} are dequantised y = (v + u) / K, u ~ U[0,1)^d,
  so y lives in [0, 1]^d. For a density p on y, the discrete model P(v) >= p(y) K^-d (Jensen),
  and the reported figure is bits/dim = -(log p(y) - d log K) / (d log 2) (lower is better).
* ``digits``: scikit-learn's bundled 8x8 digits (17 levels, offline). ``mnist`` (idx files) and
  ``cifar10`` (python batches) read a local folder; nothing is ever downloaded.
* CIFAR batches are pickles by format: they are read with an unpickler that only admits the
  numpy array reconstructors, so a crafted file cannot run code.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, overload

import numpy as np
import numpy.typing as npt
import torch

__all__ = [
    "ImageSplits",
    "bits_per_dim",
    "dequantize",
    "fit_gaussian_bits_per_dim",
    "load_cifar10",
    "load_digits_images",
    "load_image_dataset",
    "load_mnist",
    "read_cifar_batch",
    "read_idx",
    "sample_grid_png",
    "uniform_dequantize",
    "write_idx",
]

_LN2 = math.log(2.0)


@dataclass
class ImageSplits:
    """Integer images (n, C, H, W) per split, with their number of grey levels."""

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    levels: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.train.shape[1:])  # type: ignore[return-value]

    @property
    def dim(self) -> int:
        c, h, w = self.shape
        return c * h * w


def _split(
    images: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = round(test_fraction * len(images))
    n_val = round(val_fraction * len(images))
    test = images[order[:n_test]]
    val = images[order[n_test : n_test + n_val]]
    return images[order[n_test + n_val :]], val, test


def load_digits_images(seed: int = 0) -> ImageSplits:
    """scikit-learn's 1,797 8x8 digits (values 0..16, 17 levels): 70/10/20 split by seed."""
    from sklearn.datasets import load_digits

    raw = load_digits().images.astype(np.int64)  # (1797, 8, 8), 0..16
    if raw.min() < 0 or raw.max() > 16:
        raise ValueError("unexpected digits range")
    images = raw[:, None, :, :]
    train, val, test = _split(images, 0.1, 0.2, seed)
    return ImageSplits("digits", train, val, test, levels=17, meta={"seed": seed})


# -- MNIST idx ------------------------------------------------------------------------------------
_IDX_TYPES: dict[int, npt.DTypeLike] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def _open_maybe_gz(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def read_idx(path: str | Path) -> np.ndarray:
    """An idx file (MNIST format, optionally gzipped) as a numpy array of its stated shape."""
    path = Path(path)
    data = _open_maybe_gz(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an idx file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in _IDX_TYPES:
        raise ValueError(f"{path}: unknown idx element type 0x{code:02x}")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[code])
    count = int(np.prod(dims)) if dims else 1
    body = data[4 + 4 * ndim :]
    if len(body) != count * dtype.itemsize:
        raise ValueError(
            f"{path}: idx header says {dims} ({count * dtype.itemsize} bytes), "
            f"file holds {len(body)} bytes"
        )
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array in idx format (gzipped if the name ends in .gz); for tests/tools."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: missing {stem} (or {stem}.gz)")


def load_mnist(data_dir: str | Path, *, val_size: int = 5000, seed: int = 0) -> ImageSplits:
    """MNIST from ``data_dir`` (train-images-idx3-ubyte and t10k-images-idx3-ubyte, .gz ok).

    Validation is a seeded random subset of the training file; 256 grey levels.
    """
    folder = Path(data_dir)
    train = read_idx(_find(folder, "train-images-idx3-ubyte"))
    test = read_idx(_find(folder, "t10k-images-idx3-ubyte"))
    for arr, what in ((train, "train"), (test, "t10k")):
        if arr.ndim != 3:
            raise ValueError(f"MNIST {what} images must be 3-D (n, H, W), got {arr.shape}")
    train = train[:, None].astype(np.int64)
    test = test[:, None].astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(train))
    val_size = min(val_size, max(len(train) // 10, 1))
    val = train[order[:val_size]]
    train = train[order[val_size:]]
    return ImageSplits("mnist", train, val, test, levels=256, meta={"data_dir": str(folder)})


# -- CIFAR-10 python batches ------------------------------------------------------------------------
class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR batch needs: numpy array reconstruction and builtin containers."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
        ("builtins", "bytearray"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (n, 3, 32, 32), labels (n,)) from one CIFAR-10 python batch file."""
    raw = Path(path).read_bytes()
    try:
        obj = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ValueError(f"{path}: not a CIFAR-10 batch ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: a CIFAR-10 batch is a dict")  # noqa: TRY004 - bad file
    obj = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    data = np.asarray(obj.get("data"))
    labels = np.asarray(obj.get("labels", []), dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: 'data' must be (n, 3072), got {data.shape}")
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), labels


def load_cifar10(data_dir: str | Path, *, val_size: int = 5000, seed: int = 0) -> ImageSplits:
    """CIFAR-10 from ``data_dir`` (or its cifar-10-batches-py/): data_batch_1..5, test_batch."""
    folder = Path(data_dir)
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    batches = sorted(folder.glob("data_batch_*"))
    if not batches or not (folder / "test_batch").is_file():
        raise FileNotFoundError(f"{folder}: needs data_batch_1..5 and test_batch")
    train = np.concatenate([read_cifar_batch(p)[0] for p in batches]).astype(np.int64)
    test = read_cifar_batch(folder / "test_batch")[0].astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(train))
    val_size = min(val_size, max(len(train) // 10, 1))
    val = train[order[:val_size]]
    train = train[order[val_size:]]
    return ImageSplits("cifar10", train, val, test, levels=256, meta={"data_dir": str(folder)})


def load_image_dataset(name: str, *, data_dir: str | Path | None = None, seed: int = 0):
    """``digits`` (offline), ``mnist`` or ``cifar10`` (need ``data_dir``)."""
    if name == "digits":
        return load_digits_images(seed)
    if name in ("mnist", "cifar10"):
        if data_dir is None:
            raise ValueError(f"{name} needs data_dir: a local folder with its files")
        return (load_mnist if name == "mnist" else load_cifar10)(data_dir, seed=seed)
    raise ValueError(f"unknown image data set {name!r}; use digits, mnist or cifar10")


# -- dequantisation and bits/dim ---------------------------------------------------------------
def dequantize(
    images: np.ndarray | torch.Tensor,
    levels: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """y = (v + u) / levels with u ~ U[0, 1): integer images to [0, 1] (uniform dequantisation)."""
    return uniform_dequantize(torch.as_tensor(np.asarray(images), dtype=dtype), levels, generator)


def uniform_dequantize(
    x: torch.Tensor, levels: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(x + u) / levels, u ~ U[0, 1) drawn on the CPU generator: x of integer pixel values
    (any device) to a density on [0, 1]^d."""
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return (x + u) / levels


@overload
def bits_per_dim(log_prob: torch.Tensor, dim: int, levels: int) -> torch.Tensor: ...


@overload
def bits_per_dim(log_prob: float, dim: int, levels: int) -> float: ...


def bits_per_dim(log_prob: torch.Tensor | float, dim: int, levels: int) -> torch.Tensor | float:
    """Bits/dim of the discrete data from log p(y) of y in [0, 1]^d (per image, or a mean)."""
    return -(log_prob - dim * math.log(levels)) / (dim * _LN2)


def fit_gaussian_bits_per_dim(
    splits: ImageSplits, *, seed: int = 0, shrinkage: float = 1e-3
) -> dict[str, float]:
    """Baseline: a full-covariance Gaussian fitted (MLE, small ridge) to dequantised train
    images, scored on one dequantised draw of the test images."""
    gen = torch.Generator().manual_seed(seed)
    tr = dequantize(splits.train, splits.levels, generator=gen, dtype=torch.float64)
    te = dequantize(splits.test, splits.levels, generator=gen, dtype=torch.float64)
    tr, te = tr.reshape(len(tr), -1), te.reshape(len(te), -1)
    mean = tr.mean(0)
    cov = torch.cov(tr.T, correction=0) + shrinkage * torch.eye(tr.shape[1], dtype=tr.dtype)
    dist = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    bpd = bits_per_dim(dist.log_prob(te), tr.shape[1], splits.levels)
    diag = torch.distributions.Normal(mean, tr.std(0).clamp_min(1e-3))
    bpd_diag = bits_per_dim(diag.log_prob(te).sum(-1), tr.shape[1], splits.levels)
    return {
        "full_covariance_bits_per_dim": float(bpd.mean()),
        "diagonal_bits_per_dim": float(bpd_diag.mean()),
    }


def sample_grid_png(images: np.ndarray | torch.Tensor, *, nrow: int = 8, scale: int = 4) -> bytes:
    """A PNG grid of images (n, C, H, W) with values in [0, 1] (clipped), C = 1 or 3."""
    from PIL import Image

    arr = np.asarray(torch.as_tensor(images).detach().cpu().float().numpy())
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ValueError(f"expected images (n, 1|3, H, W), got {arr.shape}")
    n, c, h, w = arr.shape
    ncol = min(nrow, max(n, 1))
    nrows = max(math.ceil(n / ncol), 1)
    pad = 1
    grid = np.ones((c, nrows * (h + pad) + pad, ncol * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = arr[i]
    grid = np.nan_to_num(grid, nan=0.0).clip(0.0, 1.0)
    pixels = (grid * 255.0 + 0.5).astype(np.uint8)
    img = Image.fromarray(pixels[0] if c == 1 else pixels.transpose(1, 2, 0))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
