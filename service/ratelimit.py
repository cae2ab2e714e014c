"""Request-rate limits on /v1 and /v2 as ASGI middleware (the `limits` library's sliding window
counters: two counters per caller and limit, whatever the rate).

The caller is the API key (its id, set by ApiKeyMiddleware, which runs first) or, on a server
without keys, the client address; its limit is CPFLOW_RATE_LIMIT or its CPFLOW_KEY_LIMITS
rate_limit. Counts live in Redis (CPFLOW_REDIS_URL, so replicas share them) or in this process
(CPFLOW_RATE_LIMIT_STORAGE). Over the limit: 429 ``rate_limited`` with Retry-After.

The limiter never stops scoring: when its storage fails (Redis down), requests pass, a warning
is logged, and the storage is tried again after :data:`RETRY_STORAGE_S` (no per-request wait
on a dead Redis); a line is logged when it answers again.
"""

from __future__ import annotations

import logging
import math
import time
from functools import lru_cache

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from starlette.types import ASGIApp, Receive, Scope, Send

from service.middleware import is_guarded, send_error
from service.queue import JobSettings
from service.quotas import limits_for
from service.settings import Settings

__all__ = ["RETRY_STORAGE_S", "RateLimitMiddleware"]

log = logging.getLogger("cpflow.ratelimit")

RETRY_STORAGE_S = 5.0
"""After a storage failure, how long requests pass unchecked before Redis is tried again."""


@lru_cache(maxsize=64)
def _parse(text: str) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(text))


class RateLimitMiddleware:
    """429 with Retry-After past a caller's request rate; fails open when storage is down."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.enabled = settings.rate_limit is not None or any(
            k.rate_limit for k in settings.key_limits.values()
        )
        self._limiter: SlidingWindowCounterRateLimiter | None = None
        self._storage_kind = ""
        self._down_until = 0.0

    def _redis(self) -> Storage:
        prefix = f"cpflow:{JobSettings().queue_name}:rate"
        return RedisStorage(
            "async+" + self.settings.redis_url,
            implementation="redispy",
            key_prefix=prefix,
            socket_connect_timeout=0.25,
            socket_timeout=0.25,
        )

    async def _get_limiter(self) -> SlidingWindowCounterRateLimiter:
        """The limiter, its storage chosen on first use (auto: Redis if it answers)."""
        if self._limiter is None:
            kind = self.settings.rate_limit_storage
            storage: Storage = MemoryStorage() if kind == "memory" else self._redis()
            if kind == "auto":
                try:
                    ok = await storage.check()
                except Exception:  # noqa: BLE001 - any failure means: not reachable
                    ok = False
                if not ok:
                    log.warning(
                        "rate limiter: Redis did not answer at first use; counting in this "
                        "process (each replica alone) until restart"
                    )
                    storage = MemoryStorage()
            self._storage_kind = "redis" if isinstance(storage, RedisStorage) else "memory"
            log.info("rate limiter ready", extra={"storage": self._storage_kind})
            self._limiter = SlidingWindowCounterRateLimiter(storage)
        return self._limiter

    async def _check(
        self, items: tuple[RateLimitItem, ...], who: str
    ) -> tuple[RateLimitItem, int] | None:
        """(the first limit ``who`` is over, seconds until it lets a request pass), or None
        (the hit is counted); None when the storage fails."""
        now = time.monotonic()
        if now < self._down_until:
            return None
        limiter = await self._get_limiter()
        refused = None
        try:
            for item in items:
                if not await limiter.hit(item, who):
                    stats = await limiter.get_window_stats(item, who)
                    refused = item, max(1, math.ceil(stats.reset_time - time.time()))
                    break
        except Exception as exc:  # noqa: BLE001 - fail open, whatever the storage raised
            if self._down_until == 0.0:
                log.warning(
                    "rate limiter storage unreachable: requests pass unlimited until it is back",
                    extra={"storage": self._storage_kind, "error": f"{type(exc).__name__}: {exc}"},
                )
            self._down_until = now + RETRY_STORAGE_S
            return None
        if self._down_until:
            log.warning("rate limiter storage reachable again: limits apply")
            self._down_until = 0.0
        return refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.enabled or not is_guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        who = scope.get("state", {}).get("client")
        if who is None:
            who = "addr-" + (scope.get("client") or ("unknown", 0))[0]
        text = limits_for(self.settings, who).rate_limit
        refused = await self._check(_parse(text), who) if text else None
        if refused is None:
            await self.app(scope, receive, send)
            return
        over, retry = refused
        caller = "API key" if who.startswith("key-") else "client address"
        message = (
            f"rate limit exceeded: at most {over} per {caller} (CPFLOW_RATE_LIMIT or this "
            f"key's CPFLOW_KEY_LIMITS); retry in {retry} s"
        )
        headers = [(b"retry-after", str(retry).encode())]
        await send_error(scope, send, 429, "rate_limited", message, headers)
