"""The ``auto`` recipe: flow and trainer settings chosen from the training rows themselves.

``auto_recipe(train_rows)`` looks at the number of rows, the dimension and, in 2-D, whether the
data are rotation-invariant about their mean, and returns FlowConfig and TrainConfig overrides
plus a record of every choice with its reason (the manifest's ``training.auto``). Explicit
options override any of them (training.pipeline.build_configs). Images and conditional data
keep the library defaults: the recipe covers rows.

The rules and the measurements behind them:

* 2-D with plenty of rows (the toys): the toy preset (paper Table 5's 5 blocks x 3 x 32,
  lr 0.02 cosine, exact log-det); if the angles about the mean are near uniform (rings), 32
  radial units per block, Gaussian softplus and clipping at norm 1, the toy preset's rings
  settings (bench/reports/2026-11-29f).
* Tables: whitening by the full training covariance, so that identity blocks are the
  full-covariance Gaussian the flow has to beat; 2 blocks of a 2 x 64 ICNN, Adam lr 0.002,
  plateau decay and early stopping on the validation NLL. Tuned with bench ``tables`` on its
  tuning tables only (bench/reports/2026-12-04/tables/README.md lists what was tried); above
  LARGE_TABLE_ROWS rows a larger flow, untested on real data.
* Objective: the exact log-det up to EXACT_LOSS_MAX_DIM columns, the CG surrogate above.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.splits_protocol import Splits, splits_info

__all__ = ["AUTO", "Recipe", "auto_recipe", "rows_of"]

AUTO = "auto"

# 2-D data with at least this many training rows get the toy recipe.
TOY_MIN_ROWS = 5000
# Largest circular moment of the angles (angular_anisotropy) below which 2-D data count as
# rotation-invariant (35,000 rows: rings 0.009, a Gaussian 0.006; two_spirals 0.053, swiss_roll
# 0.083, two_moons 0.13, eight_gaussians 0.61; noise about 2 / sqrt(rows)).
RADIAL_MAX_ANISOTROPY = 0.04
EXACT_LOSS_MAX_DIM = 16
# Tables with at least this many training rows get a larger flow (a rule from the paper's
# tabular sizes, not measured here: the suite has no table this large).
LARGE_TABLE_ROWS = 5000


@dataclass(frozen=True)
class Recipe:
    """FlowConfig and TrainConfig overrides, and why each was chosen."""

    flow: dict[str, Any]
    train: dict[str, Any]
    choices: dict[str, Any] = field(default_factory=dict)


def rows_of(splits: Splits) -> np.ndarray | None:
    """The training rows the recipe reads, or None for images and conditional data."""
    info = splits_info(splits)
    if info.contexts is not None or info.levels:
        return None
    train = np.asarray(splits.train)
    return train if train.ndim == 2 else None


def angular_anisotropy(rows: np.ndarray, max_order: int = 12) -> float:
    """Largest circular moment |mean exp(i k theta)|, k = 1..max_order, of the angles about
    the mean after whitening, for 2-D rows: about 1/sqrt(n) for rotation-invariant data, near
    1 for data concentrated at a few angles (eight_gaussians' k = 8 moment)."""
    x = np.asarray(rows, dtype=np.float64)
    x = x - x.mean(0)
    cov = np.cov(x, rowvar=False) + 1e-9 * np.eye(2)
    x = x @ np.linalg.cholesky(np.linalg.inv(cov))
    theta = np.arctan2(x[:, 1], x[:, 0])
    k = np.arange(1, max_order + 1)[:, None]
    return float(np.abs(np.exp(1j * k * theta).mean(1)).max())


def _choose(choices: dict, out: dict, name: str, value: Any, why: str) -> None:
    out[name] = value
    choices[name] = {"value": value, "why": why}


def auto_recipe(rows: np.ndarray | None) -> Recipe:
    """The recipe for these training rows (None: images or conditional data, no overrides)."""
    if rows is None:
        return Recipe({}, {}, {"data": "images or conditional data: the library defaults"})
    n, dim = int(rows.shape[0]), int(rows.shape[1])
    choices: dict[str, Any] = {"data": {"rows": n, "dim": dim}}
    flow: dict[str, Any] = {}
    train: dict[str, Any] = {}
    if dim <= 2 and n >= TOY_MIN_ROWS:
        _toy(rows, choices, flow, train)
    else:
        _table(n, dim, choices, flow, train)
    exact = dim <= EXACT_LOSS_MAX_DIM
    _choose(
        choices,
        train,
        "loss",
        "exact" if exact else "surrogate",
        f"d={dim} {'<=' if exact else '>'} {EXACT_LOSS_MAX_DIM}: "
        + ("the exact log-det gradient is affordable" if exact else "the CG surrogate scales"),
    )
    return Recipe(flow, train, choices)


def _toy(rows: np.ndarray, choices: dict, flow: dict, train: dict) -> None:
    why = f"{len(rows)} rows in {rows.shape[1]}-D: the toy recipe (paper Table 5)"
    for name, value in (("blocks", 5), ("depth", 3), ("hidden", 32), ("icnn", "augmented")):
        _choose(choices, flow, name, value, why)
    for key, setting in (("lr", 0.02), ("schedule", "cosine")):
        _choose(choices, train, key, setting, why + ", lr measured on eight_gaussians")
    train.update(val_every=250, val_max_points=2000)
    moment = angular_anisotropy(rows) if rows.shape[1] == 2 else 1.0
    radial = moment <= RADIAL_MAX_ANISOTROPY
    why = (
        f"largest circular moment of the angles about the mean {moment:.3f} "
        f"({'<=' if radial else '>'} {RADIAL_MAX_ANISOTROPY}): "
        + ("rotation-invariant data, radial steps of the map" if radial else "not radial")
    )
    _choose(choices, flow, "radial_units", 32 if radial else 0, why)
    _choose(choices, flow, "activation", "gaussian" if radial else "logistic", why)
    if radial:
        _choose(choices, train, "grad_clip", 1.0, why)


def _table(n: int, dim: int, choices: dict, flow: dict, train: dict) -> None:
    _choose(
        choices,
        flow,
        "standardization",
        "whiten",
        "whitening by the train covariance: identity blocks are the full-covariance Gaussian",
    )
    small = n < LARGE_TABLE_ROWS
    size = f"{n} rows {'<' if small else '>='} {LARGE_TABLE_ROWS}"
    blocks, depth, hidden = (2, 2, 64) if small else (4, 3, 128)
    _choose(choices, flow, "blocks", blocks, f"{size}: {blocks} blocks")
    _choose(choices, flow, "depth", depth, f"{size}: ICNN depth {depth}")
    _choose(choices, flow, "hidden", hidden, f"{size}: ICNN width {hidden}")
    _choose(choices, flow, "icnn", "augmented", "the paper's ICNN")
    _choose(choices, flow, "activation", "logistic", "measured best of the three on the tables")
    _choose(choices, train, "lr", 0.002, "tuned on the tuning tables (0.001-0.01 tried)")
    _choose(choices, train, "weight_decay", 0.0, "1e-4 and 1e-3 measured no better on the tables")
    _choose(choices, train, "schedule", "plateau", "10x decay on validation plateaus")
    every, patience = (10, 60) if small else (50, 20)
    _choose(
        choices,
        train,
        "early_stopping_patience",
        patience,
        f"stop after {every * patience} iterations without a better validation NLL",
    )
    train.update(plateau_patience=10, val_every=every, val_max_points=None if small else 5000)
