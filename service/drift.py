"""Drift of live traffic: each model version's recent log-densities against its held-out ones.

Every scored row of a version published with held-out scores (model_store.calibration) joins
that version's window of the last CPFLOW_DRIFT_WINDOW scores. With CPFLOW_DRIFT_STORAGE=redis
the window is a Redis list (``cpflow:<queue>:drift:<name>:<version>``, RPUSH then LTRIM), so
every replica reports the same one; scores are buffered in the process and pushed once a
second (and before a report), never on the scoring path. While Redis does not answer, this
process's own window answers (``scope: process``) and Redis is asked again after
:data:`RETRY_S`.

The statistic is the two-sample Kolmogorov-Smirnov test of the window against the held-out
scores: D = sup |F_window - F_heldout| with the held-out CDF interpolated from the stored
quantiles (model_store.calibration), and its asymptotic p-value (the Kolmogorov distribution at
the effective size n m / (n + m), as scipy.stats.ks_2samp's ``asymp`` mode), plus the mean shift
(window mean minus held-out mean; negative: traffic is less likely under the model).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import redis.asyncio as aioredis
from scipy import stats

from model_store.calibration import Reference
from service.metrics import ServiceMetrics
from service.queue import JobSettings
from service.settings import Settings

__all__ = ["FLUSH_S", "MIN_ROWS", "RETRY_S", "DriftMonitor", "DriftStats", "drift_statistics"]

log = logging.getLogger("cpflow.drift")

FLUSH_S = 1.0
"""Seconds between two pushes of the buffered scores to Redis."""
RETRY_S = 30.0
"""After Redis failed to answer, how long the process's own window answers before it is tried."""
MIN_ROWS = 20
"""Fewer rows in a window than this: no statistic yet."""

Key = tuple[str, int]
Scope = Literal["shared", "process"]


@dataclass(frozen=True)
class DriftStats:
    """The KS test of a window of scores against a version's held-out scores."""

    rows: int
    statistic: float | None
    p_value: float | None
    mean_shift: float | None
    window: np.ndarray  # the scores compared (for a histogram)


def drift_statistics(window: np.ndarray, reference: Reference) -> DriftStats:
    """KS statistic, p-value and mean shift of ``window`` against ``reference`` (None below
    :data:`MIN_ROWS` rows)."""
    n = int(window.size)
    if n < MIN_ROWS:
        return DriftStats(n, None, None, None, window)
    u = np.sort(reference.percentiles(window))  # held-out CDF at each window score
    steps = np.arange(1, n + 1) / n
    d = float(max(np.max(steps - u), np.max(u - (steps - 1 / n))))
    m = reference.rows
    effective = round(n * m / (n + m))
    p = float(stats.kstwo.sf(d, max(effective, 1)))
    return DriftStats(n, d, p, float(window.mean()) - reference.mean, window)


@dataclass
class _Window:
    """One version's scores: this process's window, and those not yet pushed to Redis."""

    reference: Reference
    local: deque[float]
    pending: deque[float]
    changed: bool = False


@dataclass
class DriftMonitor:
    """The drift windows of one app (see the module's doc)."""

    settings: Settings
    metrics: ServiceMetrics
    _windows: dict[Key, _Window] = field(default_factory=dict)
    _redis: Any = None
    _down_until: float = 0.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one push at a time

    def __post_init__(self) -> None:
        if self.settings.drift_storage == "redis":
            self._redis = aioredis.Redis.from_url(
                self.settings.redis_url, socket_connect_timeout=0.25, socket_timeout=0.5
            )
        self.prefix = f"cpflow:{JobSettings().queue_name}:drift"

    @property
    def enabled(self) -> bool:
        return self.settings.drift_window > 0

    def record(self, name: str, version: int, reference: Reference, scores: np.ndarray) -> None:
        """Add a batch of scores (log p per row; NaN and infinities are left out) to the window
        of ``name`` ``version``. Cheap: no I/O."""
        if not self.enabled:
            return
        values = scores[np.isfinite(scores)].tolist()
        win = self._windows.get((name, version))
        if win is None:
            cap = self.settings.drift_window
            win = _Window(reference, deque(maxlen=cap), deque(maxlen=cap))
            self._windows[(name, version)] = win
        win.local.extend(values)
        if self._redis is not None:
            win.pending.extend(values)
        win.changed = True

    async def report(
        self, name: str, version: int, reference: Reference
    ) -> tuple[DriftStats, Scope]:
        """The statistics of the version's window and its scope ("shared": the Redis window
        of every replica; "process": this process's own)."""
        win = self._windows.get((name, version))
        async with self._lock:
            shared = await self._push((name, version), win, read=True)
        scope: Scope = "shared" if shared is not None else "process"
        if shared is None:
            shared = np.array(win.local if win else (), dtype=np.float64)
        window = shared
        result = drift_statistics(window, reference)
        self._export(name, version, result)
        return result, scope

    async def _push(self, key: Key, win: _Window | None, *, read: bool) -> np.ndarray | None:
        """Push the window's pending scores to Redis (trimmed to the window) and, with
        ``read``, return the shared window; None while Redis is not used or does not answer."""
        if self._redis is None or time.monotonic() < self._down_until:
            return None
        name = f"{self.prefix}:{key[0]}:{key[1]}"
        values = list(win.pending) if win is not None else []
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                if values:
                    pipe.rpush(name, *values)
                    pipe.ltrim(name, -self.settings.drift_window, -1)
                if read:
                    pipe.lrange(name, 0, -1)
                replies = await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - Redis down: this process's window answers
            if not self._down_until:  # once per outage, not every RETRY_S
                log.warning(
                    "drift: Redis did not answer; each process keeps its own window, and Redis "
                    "is asked again every %s s", RETRY_S,
                    extra={"error": f"{type(exc).__name__}: {exc}"},
                )  # fmt: skip
            self._down_until = time.monotonic() + RETRY_S
            return None
        if self._down_until:
            log.warning("drift: Redis answers again; the window is shared by the replicas")
            self._down_until = 0.0
        if win is not None:
            for _ in values:  # only those pushed: more may have arrived meanwhile
                win.pending.popleft()
        return np.array(replies[-1], dtype=np.float64) if read else None

    def _export(self, name: str, version: int, result: DriftStats) -> None:
        """Set the cpflow_drift_* gauges of the version."""
        m, labels = self.metrics, (name, str(version))
        m.drift_window_rows.labels(*labels).set(result.rows)
        for gauge, value in (
            (m.drift_statistic, result.statistic),
            (m.drift_p_value, result.p_value),
            (m.drift_mean_shift, result.mean_shift),
        ):
            gauge.labels(*labels).set(float("nan") if value is None else value)

    async def flush(self) -> None:
        """Push every window's new scores and refresh its gauges."""
        for key, win in list(self._windows.items()):
            if win.changed:
                win.changed = False
                await self.report(key[0], key[1], win.reference)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Flush every :data:`FLUSH_S` while the app runs, and once more at its end."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(FLUSH_S)
                try:
                    await self.flush()
                except Exception:
                    log.exception("drift flush failed")

        task = asyncio.create_task(loop()) if self.enabled else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.flush(), 2.0)
            if self._redis is not None:
                await self._redis.aclose()
