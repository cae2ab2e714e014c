"""Calibrated scores (model_store.calibration): the stored reference and the percentile."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from model_store.calibration import REFERENCE_MAX_VALUES, Reference, reference_summary


def _reference(scores: np.ndarray) -> Reference:
    record = reference_summary(scores, split="test", method="exact")
    assert record is not None
    ref = Reference.from_manifest({"training": {"calibration": record}})
    assert ref is not None
    return ref


def test_small_reference_keeps_every_score_sorted() -> None:
    scores = np.random.default_rng(0).normal(size=300)
    record = reference_summary(np.append(scores, [np.nan, -np.inf]), split="val", method="slq")
    assert record is not None
    assert record["quantiles"] == sorted(scores.tolist())
    assert record["rows"] == 300 and record["dropped_non_finite"] == 2
    assert record["split"] == "val" and record["method"] == "slq"
    assert record["mean"] == pytest.approx(scores.mean())


def test_large_reference_is_capped_to_quantiles() -> None:
    scores = np.random.default_rng(1).gumbel(size=50_000)
    record = reference_summary(scores, split="test", method="exact")
    assert record is not None and len(record["quantiles"]) == REFERENCE_MAX_VALUES
    assert record["quantiles"][0] == scores.min() and record["quantiles"][-1] == scores.max()
    assert record["rows"] == 50_000


@pytest.mark.parametrize("rows", [200, 50_000])
def test_percentile_matches_scipy_percentileofscore(rows: int) -> None:
    """Against an independent reference: scipy's rank of each score among the held-out
    scores. Linear interpolation between kept values differs from the step ECDF by at most
    one step (1/rows, or 1/1000 for quantiles) plus the quantiles' own rounding."""
    rng = np.random.default_rng(2)
    held = rng.standard_t(5, size=rows)
    new = rng.standard_t(5, size=500)
    expected = stats.percentileofscore(held, new, kind="weak") / 100
    got = _reference(held).percentiles(new)
    assert np.max(np.abs(got - expected)) <= 1.5 / min(rows, REFERENCE_MAX_VALUES - 1)


def test_percentile_tails_and_nan() -> None:
    ref = _reference(np.arange(10.0))
    got = ref.percentiles(np.array([-1e9, -np.inf, 1e9, np.nan, 4.5]))
    assert got[:3].tolist() == [0.0, 0.0, 1.0] and np.isnan(got[3])
    assert got[4] == pytest.approx(0.5)


def test_versions_without_a_reference() -> None:
    assert Reference.from_manifest({"training": {"metrics": {}}}) is None
    assert Reference.from_manifest({"training": None}) is None
    assert reference_summary([1.0, np.nan], split="test", method="exact") is None
