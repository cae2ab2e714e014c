"""Calibrated scores end to end: train_and_publish stores the held-out log-densities, and fresh
rows of the known toy density get uniform percentiles from the stored reference."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats

from model_store import ModelStore
from model_store.calibration import REFERENCE_MAX_VALUES, Reference
from training.pipeline import train_and_publish

_MIX = np.array([[1.5, 0.4], [0.0, 0.7]])


def _draw(n: int, rng: np.random.Generator) -> np.ndarray:
    """The toy's known density: a correlated Gaussian N((1, -2), M^T M)."""
    return (rng.normal(size=(n, 2)) @ _MIX + np.array([1.0, -2.0])).astype(np.float32)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    rng = np.random.default_rng(0)
    splits = SimpleNamespace(
        name="gauss2", train=_draw(600, rng), val=_draw(200, rng), test=_draw(40_000, rng),
        sha256="a" * 64,
    )  # fmt: skip
    store = ModelStore(tmp_path_factory.mktemp("calib"))
    train_and_publish(
        splits, "gauss2", store, flow_config={"blocks": 1, "hidden": 8, "depth": 1},
        train_config={"iterations": 30, "batch_size": 100, "val_every": 30},
        make_plots=False, export_onnx=False,
    )  # fmt: skip
    loaded = store.load("gauss2", "latest")
    return splits, loaded


def _log_prob(flow, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return flow.log_prob(torch.from_numpy(x), method="exact").double().numpy()


def test_manifest_holds_the_test_split_quantiles(published) -> None:
    """The stored reference equals quantiles of the test rows' log-densities recomputed
    independently from the published weights (float32 scoring: 1e-4 nats)."""
    splits, loaded = published
    record = loaded.manifest["training"]["calibration"]
    assert record["split"] == "test" and record["method"] == "exact"
    assert record["rows"] == 40_000
    again = np.quantile(
        _log_prob(loaded.flow, splits.test), np.linspace(0, 1, REFERENCE_MAX_VALUES)
    )
    np.testing.assert_allclose(record["quantiles"], again, rtol=0, atol=1e-4)


def test_fresh_rows_get_uniform_percentiles_and_one_percent_outliers(published) -> None:
    _, loaded = published
    ref = Reference.from_manifest(loaded.manifest)
    assert ref is not None
    fresh = _draw(4000, np.random.default_rng(7))
    pct = ref.percentiles(_log_prob(loaded.flow, fresh))
    # Uniform on [0, 1]: the reference's own sampling error (40k rows) is ~0.004, well under
    # what this test (4k rows) resolves.
    assert stats.kstest(pct, "uniform").pvalue > 0.01
    # Outlier flag at 1%: Binomial(4000, 0.01) / 4000 has sd 0.0016; allow 3.5 sd.
    assert abs(np.mean(pct < 0.01) - 0.01) < 3.5 * np.sqrt(0.01 * 0.99 / 4000)
    # Rows far from the data (8 sd along the narrow axis) rank below every held-out row.
    far = fresh[:50] + np.array([0.0, 8 * 0.7], dtype=np.float32)
    assert np.all(ref.percentiles(_log_prob(loaded.flow, far)) < 0.01)
