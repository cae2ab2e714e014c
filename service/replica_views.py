"""Replicas compare their views of the model store through Redis.

Every serving process (a replica, or one worker process of ``cpflow-serve --workers N``)
publishes what it serves: each loaded version with the sha256 of its weights as its manifest
gave them when the version loaded and verified. The view is one Redis key,
``cpflow:<queue>:replicas:<replica id>`` (the job queue's namespace, CPFLOW_QUEUE_NAME), written
every CPFLOW_REPLICA_VIEW_S with a time-to-live of three periods, so a replica that died drops
out. Each exchange reads the other live views and lists the versions that this replica and
another one both serve with different weights (a store replaced or restored behind a
replica's back, replicas pointed at different stores, a stale object-store cache): /readyz
shows them (readiness itself is not withdrawn: which replica is right is the operator's call)
and ``cpflow_replica_view_disagreements`` counts them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from typing import Any, cast

import redis

from service.engine import InferenceEngine
from service.settings import JobSettings, Settings

__all__ = ["ReplicaViews", "compare_views"]

log = logging.getLogger("cpflow.replicas")

_TTL_PERIODS = 3
_REDIS_TIMEOUT_S = 0.5


def compare_views(mine: dict[str, str], others: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """The versions (``name@version`` -> weights sha256) served by this replica (``mine``) and
    by another one (replica id -> its view) with different weights: one row per version, with
    this replica's digest and each disagreeing replica's."""
    rows = []
    for key in sorted(mine):
        there = {rid: view[key] for rid, view in sorted(others.items()) if key in view}
        differing = {rid: digest for rid, digest in there.items() if digest != mine[key]}
        if differing:
            name, _, version = key.rpartition("@")
            rows.append({"model": name, "version": int(version), "weights_sha256": mine[key],
                         "replicas": differing})  # fmt: skip
    return rows


class ReplicaViews:
    """This replica's view in Redis, and how it compares with the other replicas' views."""

    def __init__(self, engine: InferenceEngine, settings: Settings) -> None:
        self.engine = engine
        self.period_s = settings.replica_view_s
        self.replica_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.prefix = f"cpflow:{JobSettings().queue_name}:replicas:"
        self.redis = redis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=_REDIS_TIMEOUT_S,
            socket_timeout=_REDIS_TIMEOUT_S,
        )
        self.last: dict[str, Any] = {"ok": False, "replicas": 0, "disagreements": [],
                                     "error": "not compared yet"}  # fmt: skip

    def view(self) -> dict[str, str]:
        """``name@version`` -> weights sha256 of every loaded version."""
        out = {}
        for name, version in self.engine.loaded():
            model = self.engine.cached(name, version)
            digest = (model.manifest.get("files") or {}).get("weights.safetensors")
            if isinstance(digest, str):
                out[f"{name}@{version}"] = digest
        return out

    def _exchange_sync(self, mine: dict[str, str]) -> dict[str, dict[str, str]]:
        """Publish ``mine`` (with its TTL) and read the other live replicas' views."""
        ttl = max(1, round(self.period_s * _TTL_PERIODS))
        body = json.dumps({"replica": self.replica_id, "at": time.time(), "loaded": mine})
        self.redis.set(self.prefix + self.replica_id, body, ex=ttl)
        keys = [k for k in self.redis.scan_iter(match=self.prefix + "*", count=1000)
                if k.decode() != self.prefix + self.replica_id]  # fmt: skip
        others: dict[str, dict[str, str]] = {}
        for raw in cast(list[bytes | None], self.redis.mget(keys)) if keys else []:
            if raw is None:
                continue  # expired between the scan and the read
            try:
                other = json.loads(raw)
                others[str(other["replica"])] = dict(other["loaded"])
            except (ValueError, KeyError, TypeError):
                continue  # not a view this version writes
        return others

    async def exchange(self) -> dict[str, Any]:
        """Publish this replica's view, compare it with the others'; the report (also kept in
        :attr:`last`): ok, how many other replicas answered, the disagreements, the error."""
        mine = self.view()
        try:
            others = await asyncio.to_thread(self._exchange_sync, mine)
        except redis.RedisError as exc:
            self.last = {"ok": False, "replicas": 0, "disagreements": [],
                         "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip
            return self.last
        rows = compare_views(mine, others)
        if rows and rows != self.last.get("disagreements"):
            log.error("replicas serve different weights", extra={"disagreements": rows})
        self.engine.metrics.replica_disagreements.set(len(rows))
        self.last = {"ok": True, "replicas": len(others), "disagreements": rows, "error": None}
        return self.last

    async def run(self) -> None:
        """Exchange every ``period_s`` until cancelled."""
        while True:
            await self.exchange()
            await asyncio.sleep(self.period_s)

    def close(self) -> None:
        """Withdraw this replica's view (bounded by the Redis timeout; else it expires)."""
        try:
            self.redis.delete(self.prefix + self.replica_id)
        except redis.RedisError:
            pass
        self.redis.close()
