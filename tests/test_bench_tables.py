"""The real-tables benchmark's data handling: which columns count as continuous, and the one
split and scaling every model sees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]

from bench.suites.tables import (
    HELD_OUT,
    LARGE,
    NEW_HELD_OUT,
    TABLES,
    TUNING,
    continuous_columns,
    subsample,
    table_array,
    table_splits,
)


def test_point_masses_discrete_codes_and_few_values_are_not_continuous_columns() -> None:
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame(
        {
            "height": rng.normal(170, 10, n).round(1),
            "count": rng.poisson(20, n).astype(float),  # a count: its zero cell is fine
            "spiky": np.where(rng.uniform(size=n) < 0.2, 0.0, rng.lognormal(size=n)),
            "code": rng.integers(0, 5, n).astype(float),  # 5 values
            "mostly_one": np.where(rng.uniform(size=n) < 0.5, 1.0, rng.integers(2, 60, n)),
        }
    )
    assert continuous_columns(frame) == ["height", "count"]


def test_every_model_gets_the_same_80_20_split_standardised_by_the_train_rows() -> None:
    splits = table_splits("sklearn:iris")
    sizes = splits.sizes
    total = sum(sizes.values())
    assert total == 150 and sizes["test"] == 30 and sizes["val"] == round(120 / 8)
    assert np.allclose(splits.train.mean(0), 0, atol=1e-5)
    assert np.allclose(splits.train.std(0), 1, atol=1e-5)
    # iris is recorded in millimetres: every column is dequantised by one step of 0.1 cm
    assert splits.meta["dequantized"] == {c: 0.1 for c in splits.meta["columns"]}
    again = table_splits("sklearn:iris")
    assert splits.sha256 == again.sha256  # fixed shuffle and fixed noise
    groups = [set(TUNING), set(HELD_OUT), set(LARGE), set(NEW_HELD_OUT)]
    assert sum(map(len, groups)) == len(TABLES) and set().union(*groups) == set(TABLES)


def test_a_large_table_is_cut_to_the_same_seeded_subsample_in_table_order() -> None:
    frame = pd.DataFrame({"x": np.arange(1000.0), "y": np.arange(1000.0) ** 2})
    cut = subsample(frame, 100)
    assert len(cut) == 100 and cut.index.is_unique and cut.index.is_monotonic_increasing
    assert (cut["y"] == cut["x"] ** 2).all()  # whole rows, not columns drawn apart
    assert cut.equals(subsample(frame, 100))  # fixed seed
    assert not cut.equals(frame.iloc[:100])  # drawn, not the first rows
    assert subsample(frame, None) is frame and subsample(frame, 5000) is frame


def test_the_new_held_out_tables_are_unseen_and_as_large_and_wide_as_issue_30_asks() -> None:
    seen = set(TUNING) | set(HELD_OUT) | set(LARGE)
    assert len(NEW_HELD_OUT) >= 6 and not seen & set(NEW_HELD_OUT)
    shapes = [table_array(name)[0].shape for name in NEW_HELD_OUT]
    assert sum(rows >= 5000 for rows, _ in shapes) >= 2
    assert sum(cols >= 30 for _, cols in shapes) >= 2


def test_the_summary_counts_wins_and_the_paired_gap_at_each_budget() -> None:
    from bench.suites.tables import WALL, summarise

    def row(name: str, cp: float, wall: float, nsf: float, gauss: float) -> dict:
        models = {"cpflow auto": cp, WALL: wall, "Gaussian (full cov)": gauss}
        return {
            "held_out": name not in TUNING,
            "models": {m: {"test_nll": {"mean": v}} for m, v in models.items()},
            "gap_to_nsf": {"mean": cp - nsf},
            "gap_to_nsf_wall_clock": {"mean": wall - nsf},
        }

    rows = [row("a", 1.0, 1.5, 1.2, 2.0), row("b", 3.0, 2.0, 2.5, 2.8)]
    rows.append(row("sklearn:iris", 0.0, 0.0, 9.0, 9.0))  # a tuning table is not counted
    out = summarise(rows)
    assert out["iterations"]["ahead_of_nsf"] == 1 and out["wall_clock"]["ahead_of_nsf"] == 1
    assert out["iterations"]["beats_gaussian"] == 1 and out["wall_clock"]["beats_gaussian"] == 2
    assert out["iterations"]["mean_gap_to_nsf"] == pytest.approx((-0.2 + 0.5) / 2)
    assert out["wall_clock"]["mean_gap_to_nsf"] == pytest.approx((0.3 - 0.5) / 2)
    assert out["wall_clock"]["mean_gap_to_nsf_se"] == pytest.approx(
        np.std([0.3, -0.5], ddof=1) / np.sqrt(2)
    )
