"""The splits of one training run as tensors on its device: rows, images and contexts alike.

Images (integer pixels with ``levels``) are flattened to rows; val and test are dequantised
once with fixed noise, training batches afresh from the batch generator. Conditional splits
bring their context rows along.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from training.config import TrainConfig
from training.images import uniform_dequantize
from training.splits_protocol import Splits, SplitsInfo, splits_info

__all__ = ["DataShape", "RunData"]


@dataclass(frozen=True)
class DataShape:
    """What the flow's configuration takes from the data: widths and the image shape."""

    dim: int
    context_dim: int | None
    image_shape: tuple[int, ...] | None
    train_rows: np.ndarray  # the training split as (n, dim) rows

    @classmethod
    def of(cls, splits: Splits) -> DataShape:
        info = splits_info(splits)
        train = np.asarray(splits.train)
        image_shape = tuple(train.shape[1:]) if train.ndim == 4 else None
        if image_shape is not None:
            train = train.reshape(train.shape[0], -1)
        if train.ndim != 2 or train.shape[0] == 0:
            raise ValueError("the training split must be a non-empty 2-D array")
        contexts = info.contexts
        context_dim = None if contexts is None else int(np.asarray(contexts[0]).shape[1])
        return cls(int(train.shape[1]), context_dim, image_shape, train)


class RunData:
    """Train and validation tensors (test on demand, at the end) on ``device`` in ``dtype``."""

    def __init__(
        self,
        splits: Splits,
        shape: DataShape,
        cfg: TrainConfig,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.splits, self.shape, self.cfg = splits, shape, cfg
        self.device, self.dtype = device, dtype
        self.info: SplitsInfo = splits_info(splits)
        self.levels = self.info.levels
        contexts = self.info.contexts
        self.x_train = self.tensor(shape.train_rows)
        self.c_train = None if contexts is None else self._contexts(contexts[0])
        val = None if splits.val is None else np.asarray(splits.val)
        c_val = None if contexts is None else contexts[1]
        if val is None or val.size == 0:
            val = shape.train_rows[: cfg.val_max_points or len(shape.train_rows)]
            c_val = None if contexts is None else contexts[0]
        self.x_val_all = self.tensor(val, noise_seed=cfg.seed + 6)
        self.c_val_all = None if c_val is None else self._contexts(c_val)
        self.x_val = self.x_val_all[: cfg.val_max_points] if cfg.val_max_points else self.x_val_all
        self.c_val = None if self.c_val_all is None else self.c_val_all[: self.x_val.shape[0]]
        # the training curve's train NLL is scored on these fixed rows at each validation
        self.train_probe = (
            None
            if cfg.train_nll_points is None
            else self.train_subset(cfg.train_nll_points, cfg.seed + 9)
        )

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    def tensor(self, rows: np.ndarray, noise_seed: int | None = None) -> torch.Tensor:
        """Rows on the device; images dequantised once with fixed noise (val and test)."""
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, self.shape.dim)
        t = torch.as_tensor(arr, dtype=self.dtype, device=self.device)
        if self.levels and noise_seed is not None:
            t = uniform_dequantize(t, self.levels, torch.Generator().manual_seed(noise_seed))
        return t

    def _contexts(self, rows: np.ndarray) -> torch.Tensor:
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, self.shape.context_dim or 0)
        return torch.as_tensor(arr, dtype=self.dtype, device=self.device)

    def batch(
        self, idx: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Training rows ``idx`` (images with fresh dequantisation noise) and their contexts."""
        x = self.x_train[idx]
        if self.levels:
            x = uniform_dequantize(x, self.levels, generator)
        return x, None if self.c_train is None else self.c_train[idx]

    def init_rows(self) -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray]:
        """The data-dependent initialisation batch (finite rows only), its contexts, and the
        rows standardisation statistics are fitted on (all train rows; the batch for images)."""
        cfg = self.cfg
        idx = torch.randperm(self.n_train, generator=torch.Generator().manual_seed(cfg.seed))
        idx = idx[: cfg.init_batch_size].to(self.device)
        x = self.x_train[idx]
        if self.levels:
            x = uniform_dequantize(x, self.levels, torch.Generator().manual_seed(cfg.seed))
        stats_rows = x.double().cpu().numpy() if self.levels else self.shape.train_rows
        c = None if self.c_train is None else self.c_train[idx]
        keep = torch.isfinite(x).all(dim=1)
        if c is not None:
            keep &= torch.isfinite(c).all(dim=1)
            c = c[keep]
        return x[keep], c, stats_rows

    def train_subset(
        self, most: int | None, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Up to ``most`` train rows drawn with ``seed`` (None: all), and their contexts;
        images dequantised with fixed noise (seed + 3)."""
        x, c = self.x_train, self.c_train
        if most and self.n_train > most:
            sub = torch.randperm(self.n_train, generator=torch.Generator().manual_seed(seed))
            sub = sub[:most].to(self.device)
            x, c = x[sub], None if c is None else c[sub]
        if self.levels:
            x = uniform_dequantize(x, self.levels, torch.Generator().manual_seed(seed + 3))
        return x, c

    def final_row_count(self) -> int:
        """Rows the final metrics score (train subsample, val and test), without building
        them."""
        train = self.n_train
        if self.cfg.final_train_max_points:
            train = min(train, self.cfg.final_train_max_points)
        test = self.splits.test
        return train + len(self.x_val_all) + (0 if test is None else len(test))

    def final_parts(
        self,
    ) -> list[tuple[str, torch.Tensor | None, torch.Tensor | None]]:
        """(name, x, c) of the train (subsampled to ``final_train_max_points``, dequantised with
        fixed noise), val and test splits that the final metrics score."""
        cfg = self.cfg
        x_tr, c_tr = self.train_subset(cfg.final_train_max_points, cfg.seed + 4)
        test = self.splits.test
        x_test = None if test is None else self.tensor(np.asarray(test), noise_seed=cfg.seed + 8)
        contexts = self.info.contexts
        c_test = None if contexts is None else self._contexts(contexts[2])
        return [
            ("train", x_tr, c_tr),
            ("val", self.x_val_all, self.c_val_all),
            ("test", x_test, c_test),
        ]
