"""The ``auto`` recipe: flow and trainer settings chosen from the training rows themselves.

``auto_recipe(train_rows)`` looks at the number of rows, the dimension and, in 2-D, whether the
data are rotation-invariant about their mean, and returns FlowConfig and TrainConfig overrides
plus a record of every choice with its reason (the manifest's ``training.auto``). Explicit
options override any of them (training.pipeline.build_configs). Conditional data keep the
library defaults.

The rules and the measurements behind them:

* 2-D with plenty of rows (the toys): the toy preset (paper Table 5's 5 blocks x 3 x 32,
  lr 0.02 cosine, exact log-det); if the angles about the mean are near uniform (rings), 32
  radial units per block, Gaussian softplus and clipping at norm 1, the toy preset's rings
  settings (bench/reports/2026-11-29f).
* Tables: whitening by the full training covariance, so that identity blocks are the
  full-covariance Gaussian the flow has to beat; 2 blocks of a 2 x 64 ICNN, Adam lr 0.002,
  plateau decay and early stopping on the validation NLL. Tuned with bench ``tables`` on its
  tuning tables only (bench/reports/2026-12-04/tables/README.md lists what was tried); above
  LARGE_TABLE_ROWS rows or WIDE_TABLE_DIM columns a larger flow (4 x 3 x 128, wider past 64
  columns).
* Images: the multiscale convolutional potential of the image preset made for that image
  shape (digits' 8x8: 2+2+2 blocks of 16 channels, test 2.29 bits/dim), with its training
  settings but not its budget; other shapes get the same narrow potential with as many scales
  as the sides halve. The library default (one scale of 64 channels) needed 23 GB to score
  the 8x8 digits (issue #31).
* Time budgets (TrainConfig.time_budget_s): the trainer plans the iterations from its measured
  step time (training.budget); the recipe's ``budget_validations`` spreads as many validations
  over them as its 2,000-iteration schedule has, so the validation interval, and with it the
  plateau decay and early stopping (counted in validations), scale with the budget, and the
  toys' cosine decay runs over the planned iterations.
* Objective: the exact log-det up to EXACT_LOSS_MAX_DIM columns, the CG surrogate above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.presets import PRESETS
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
# Tables with at least this many columns get the larger flow too, whatever their rows (issue
# #30: 17k parameters were 14.9 nats behind NSF on a 47-column table, best validation at the
# last iteration). On the tuning tables the larger flow (4 x 3 x 128) was 0.12 nats better on
# the widest, wine (13 columns), and within 0.065 either way on the 2-6 column ones
# (bench/reports/2026-12-04/tables/README.md, seeds 0-2, 1,500 iterations).
WIDE_TABLE_DIM = 10
# Whitening needs a covariance estimate: with fewer training rows per column than this, the
# columns are standardised one by one instead. Decided AFTER seeing a held-out result
# (bench/reports/2026-12-08: fertility, 135 training rows x 52 columns, test NLL 26.5 whitened
# against -89.8 diagonal; the full-covariance Gaussian 13,991), so fertility no longer counts
# as held out for this rule; on the tuning tables (9.5-117 rows per column) nothing changes,
# and wine (9.5) was 1.06 nats better whitened than diagonal (2026-12-04 log).
WHITEN_MIN_ROWS_PER_COLUMN = 5


@dataclass(frozen=True)
class Recipe:
    """FlowConfig and TrainConfig overrides, and why each was chosen."""

    flow: dict[str, Any]
    train: dict[str, Any]
    choices: dict[str, Any] = field(default_factory=dict)


def image_shape_of(splits: Splits) -> tuple[int, int, int] | None:
    """The (channels, height, width) of image splits, None for rows and conditional data."""
    info = splits_info(splits)
    if not info.levels or info.image_shape is None:
        return None
    channels, height, width = (int(v) for v in info.image_shape)
    return channels, height, width


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


def auto_recipe(
    rows: np.ndarray | None, *, image_shape: tuple[int, int, int] | None = None
) -> Recipe:
    """The recipe for these training rows, or for images of ``image_shape`` (rows None and
    no shape: conditional data, no overrides)."""
    flow: dict[str, Any] = {}
    train: dict[str, Any] = {}
    if image_shape is not None:
        dim = math.prod(image_shape)
        choices: dict[str, Any] = {"data": {"image_shape": list(image_shape)}}
        _images(image_shape, choices, flow, train)
    elif rows is None:
        return Recipe({}, {}, {"data": "conditional data: the library defaults"})
    else:
        n, dim = int(rows.shape[0]), int(rows.shape[1])
        choices = {"data": {"rows": n, "dim": dim}}
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


def _images(shape: tuple[int, int, int], choices: dict, flow: dict, train: dict) -> None:
    preset = next(
        (p for p in PRESETS.values() if tuple(p.flow.get("input_shape", ())) == shape), None
    )
    if preset is not None:
        why = f"images {shape}: the {preset.name!r} preset's multiscale convolutional potential"
        blocks = preset.flow["blocks"]
        hidden, depth = preset.flow["hidden"], preset.flow["depth"]
        settings = {k: v for k, v in preset.train.items() if k not in ("iterations", "epochs")}
    else:
        scales, side = 1, min(shape[1:])
        while side % 2 == 0 and side >= 4:
            scales, side = scales + 1, side // 2
        why = f"images {shape}: a narrow multiscale convolutional potential, {scales} scales"
        blocks, hidden, depth = [2] * scales, 16, 4
        settings = {k: v for k, v in PRESETS["digits"].train.items() if k == "grad_clip"}
    _choose(choices, flow, "input_shape", list(shape), why)
    _choose(choices, flow, "blocks", blocks, why)
    _choose(choices, flow, "hidden", hidden, why)
    _choose(choices, flow, "depth", depth, why)
    for key, value in settings.items():
        _choose(choices, train, key, value, why + "'s training settings")


def _toy(rows: np.ndarray, choices: dict, flow: dict, train: dict) -> None:
    why = f"{len(rows)} rows in {rows.shape[1]}-D: the toy recipe (paper Table 5)"
    for name, value in (("blocks", 5), ("depth", 3), ("hidden", 32), ("icnn", "augmented")):
        _choose(choices, flow, name, value, why)
    for key, setting in (("lr", 0.02), ("schedule", "cosine")):
        _choose(choices, train, key, setting, why + ", lr measured on eight_gaussians")
    train.update(val_max_points=2000)  # val_every unset: 20 validations whatever the budget
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
    whiten = n >= WHITEN_MIN_ROWS_PER_COLUMN * dim
    _choose(
        choices,
        flow,
        "standardization",
        "whiten" if whiten else "diagonal",
        "whitening by the train covariance: identity blocks are the full-covariance Gaussian"
        if whiten
        else f"{n} rows < {WHITEN_MIN_ROWS_PER_COLUMN} x {dim} columns: too few for a "
        "covariance, each column standardised on its own",
    )
    small = n < LARGE_TABLE_ROWS
    size = f"{n} rows {'<' if small else '>='} {LARGE_TABLE_ROWS}"
    wide = dim >= WIDE_TABLE_DIM
    shape = f"{size}, {dim} columns {'>=' if wide else '<'} {WIDE_TABLE_DIM}"
    # the larger flow's width grows with the columns past 64 (at least twice as wide as d)
    blocks, depth, hidden = (
        (2, 2, 64) if small and not wide else (4, 3, max(128, 32 * math.ceil(2 * dim / 32)))
    )
    _choose(choices, flow, "blocks", blocks, f"{shape}: {blocks} blocks")
    _choose(choices, flow, "depth", depth, f"{shape}: ICNN depth {depth}")
    _choose(choices, flow, "hidden", hidden, f"{shape}: ICNN width {hidden}")
    _choose(choices, flow, "icnn", "augmented", "the paper's ICNN")
    _choose(choices, flow, "activation", "logistic", "measured best of the three on the tables")
    _choose(choices, train, "lr", 0.002, "tuned on the tuning tables (0.001-0.01 tried)")
    _choose(choices, train, "weight_decay", 0.0, "1e-4 and 1e-3 measured no better on the tables")
    _choose(choices, train, "schedule", "plateau", "10x decay on validation plateaus")
    every, patience = (10, 60) if small else (50, 20)
    _choose(
        choices,
        train,
        "budget_validations",
        2000 // every,
        f"with a time budget: as many validations as {every}-iteration intervals in 2,000 "
        "iterations, so the validation interval, the plateau decay and early stopping "
        "(counted in validations) scale with the iterations the budget allows",
    )
    _choose(
        choices,
        train,
        "early_stopping_patience",
        patience,
        f"stop after {every * patience} iterations without a better validation NLL",
    )
    train.update(plateau_patience=10, val_every=every, val_max_points=None if small else 5000)
