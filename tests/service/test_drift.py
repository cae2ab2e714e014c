"""service.drift: the KS statistic against scipy, and the bounded windows (per process, and one
Redis window shared by two monitors as by two replicas)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from scipy import stats

from model_store.calibration import Reference, reference_summary
from service.drift import MIN_ROWS, DriftMonitor, drift_statistics
from service.metrics import ServiceMetrics
from service.settings import Settings
from tests.helpers.procs import REDIS_URL


def _reference(scores: np.ndarray) -> Reference:
    record = reference_summary(scores, split="test", method="exact")
    ref = Reference.from_manifest({"training": {"calibration": record}})
    assert ref is not None
    return ref


@pytest.mark.parametrize("shift", [0.0, 0.2])
def test_statistic_matches_scipy_ks_2samp(shift: float) -> None:
    """Held-out scores kept whole (under 1001 rows): D differs from scipy's step-CDF D by at most
    one step of the interpolated CDF (1/999), and the p-values by what that moves."""
    rng = np.random.default_rng(3)
    held = rng.normal(size=1000)
    window = rng.normal(shift, 1.0, size=3000)
    got = drift_statistics(window, _reference(held))
    want = stats.ks_2samp(window, held, method="asymp")
    assert got.statistic == pytest.approx(want.statistic, abs=1 / 999)
    assert got.p_value == pytest.approx(want.pvalue, rel=0.35, abs=1e-6)
    assert got.mean_shift == pytest.approx(window.mean() - held.mean())


def test_statistic_needs_a_few_rows() -> None:
    got = drift_statistics(np.zeros(MIN_ROWS - 1), _reference(np.arange(50.0)))
    assert got.statistic is None and got.p_value is None and got.rows == MIN_ROWS - 1


def _monitor(tmp_path, **env: object) -> DriftMonitor:
    settings = Settings(store_dir=tmp_path, redis_url=REDIS_URL, **env)  # type: ignore[arg-type]
    return DriftMonitor(settings, ServiceMetrics())


def test_process_window_is_bounded_and_drops_non_finite(tmp_path) -> None:
    monitor = _monitor(tmp_path, drift_storage="memory", drift_window=100)
    ref = _reference(np.random.default_rng(0).normal(size=500))

    async def go():
        monitor.record("m", 1, ref, np.array([np.nan, np.inf, -np.inf]))
        for start in range(0, 250, 50):
            monitor.record("m", 1, ref, np.arange(start, start + 50, dtype=np.float64))
        return await monitor.report("m", 1, ref)

    result, scope = asyncio.run(go())
    assert scope == "process" and result.rows == 100
    assert sorted(result.window.tolist()) == list(range(150, 250))


def test_two_monitors_sharing_redis_report_one_window(tmp_path, queue_name, monkeypatch) -> None:
    monkeypatch.setenv("CPFLOW_QUEUE_NAME", queue_name)  # the key prefix, purged after
    a = _monitor(tmp_path, drift_window=300)
    b = _monitor(tmp_path, drift_window=300)
    ref = _reference(np.random.default_rng(0).normal(size=500))
    rng = np.random.default_rng(1)
    first, second = rng.normal(size=200), rng.normal(size=200)

    async def go():
        a.record("m", 2, ref, first)
        b.record("m", 2, ref, second)
        await a.flush()
        out = await b.report("m", 2, ref), await a.report("m", 2, ref)
        await a._redis.aclose()
        await b._redis.aclose()
        return out

    (rb, scope_b), (ra, scope_a) = asyncio.run(go())
    assert scope_a == scope_b == "shared"
    assert ra.rows == rb.rows == 300  # 400 scored over both, trimmed to the window
    np.testing.assert_array_equal(ra.window, rb.window)
    np.testing.assert_array_equal(ra.window, np.concatenate([first, second])[-300:])
    assert ra.statistic == rb.statistic


def test_redis_down_falls_back_to_the_process_window(tmp_path) -> None:
    settings = Settings(store_dir=tmp_path, redis_url="redis://127.0.0.1:1/0")
    monitor = DriftMonitor(settings, ServiceMetrics())
    ref = _reference(np.arange(100.0))

    async def go():
        monitor.record("m", 1, ref, np.arange(30.0))
        return await monitor.report("m", 1, ref)

    result, scope = asyncio.run(go())
    assert scope == "process" and result.rows == 30
