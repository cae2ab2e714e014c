"""Request-rate limits on /v1 and /v2 (the `limits` library's sliding window counters: two
counters per caller and limit, whatever the rate).

The caller is the API key (its id, set by ApiKeyMiddleware, which runs first) or, on a server
without keys, the client address; its limit is CPFLOW_RATE_LIMIT or its CPFLOW_KEY_LIMITS
rate_limit. Requests that fail auth are counted too, per client address under
CPFLOW_RATE_LIMIT (ApiKeyMiddleware asks :meth:`RateLimiter.refuse_address` before its 401), so
guessing keys is limited without touching any key's budget. Over the limit: 429
``rate_limited`` with Retry-After.

Counts live in Redis (CPFLOW_REDIS_URL, so replicas share them) or in this process
(CPFLOW_RATE_LIMIT_STORAGE). With ``auto`` and Redis silent, counts stay in the process and
Redis is asked again every CPFLOW_RATE_LIMIT_REPROBE_S (in the background: no request waits);
once it answers, counting moves there. The limiter never stops scoring: when its storage fails
(Redis down), requests pass, a warning is logged, and the storage is tried again after
:data:`RETRY_STORAGE_S` (no per-request wait on a dead Redis); a line is logged when it answers
again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from functools import lru_cache

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from starlette.types import ASGIApp, Receive, Scope, Send

from service.error_codes import ErrorCode
from service.middleware import is_guarded, send_error
from service.queue import JobSettings
from service.quotas import limits_for
from service.settings import Settings

__all__ = ["RETRY_STORAGE_S", "RateLimitMiddleware", "RateLimiter"]

log = logging.getLogger("cpflow.ratelimit")

RETRY_STORAGE_S = 5.0
"""After a storage failure, how long requests pass unchecked before Redis is tried again."""


@lru_cache(maxsize=64)
def _parse(text: str) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(text))


def _address(scope: Scope) -> str:
    """The caller's name when no API key names it: the client address."""
    return "addr-" + (scope.get("client") or ("unknown", 0))[0]


async def _answers(storage: Storage) -> bool:
    try:
        return bool(await storage.check())
    except Exception:  # noqa: BLE001 - any failure means: not reachable
        return False


class RateLimiter:
    """The request counts of one app: storage choice, limits per caller, 429 answers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.enabled = settings.rate_limit is not None or any(
            k.rate_limit for k in settings.key_limits.values()
        )
        self._limiter: SlidingWindowCounterRateLimiter | None = None
        self._redis_storage: RedisStorage | None = None
        self._storage_kind = ""
        self._down_until = 0.0
        self._next_probe: float | None = None  # set while auto counts in the process
        self._probe: asyncio.Task[None] | None = None

    def _redis(self) -> RedisStorage:
        if self._redis_storage is None:
            self._redis_storage = RedisStorage(
                "async+" + self.settings.redis_url,
                implementation="redispy",
                key_prefix=f"cpflow:{JobSettings().queue_name}:rate",
                socket_connect_timeout=0.25,
                socket_timeout=0.25,
            )
        return self._redis_storage

    def _use(self, storage: Storage) -> None:
        self._storage_kind = "redis" if isinstance(storage, RedisStorage) else "memory"
        self._limiter = SlidingWindowCounterRateLimiter(storage)

    async def _get_limiter(self) -> SlidingWindowCounterRateLimiter:
        """The limiter, its storage chosen on first use (auto: Redis if it answers, asked
        again in the background while it does not)."""
        if self._limiter is None:
            kind = self.settings.rate_limit_storage
            storage: Storage = MemoryStorage() if kind == "memory" else self._redis()
            if kind == "auto" and not await _answers(storage):
                log.warning(
                    "rate limiter: Redis did not answer; counting in this process (each replica "
                    "alone) and asking Redis again every %s s",
                    self.settings.rate_limit_reprobe_s,
                )
                storage = MemoryStorage()
                self._next_probe = time.monotonic() + self.settings.rate_limit_reprobe_s
            self._use(storage)
            log.info("rate limiter ready", extra={"storage": self._storage_kind})
        elif self._next_probe is not None and time.monotonic() >= self._next_probe:
            self._next_probe = time.monotonic() + self.settings.rate_limit_reprobe_s
            self._probe = asyncio.create_task(self._reprobe())  # held: tasks are weakly kept
        assert self._limiter is not None
        return self._limiter

    async def _reprobe(self) -> None:
        storage = self._redis()
        if self._next_probe is not None and await _answers(storage):
            self._next_probe = None
            self._use(storage)
            log.warning("rate limiter: Redis answers now; counting there (shared by replicas)")

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

    async def refuse(self, scope: Scope, send: Send, who: str, limit: str | None) -> bool:
        """Count a request of ``who`` under ``limit``; past it, answer 429 and return True."""
        refused = await self._check(_parse(limit), who) if limit and self.enabled else None
        if refused is None:
            return False
        over, retry = refused
        caller = "API key" if who.startswith("key-") else "client address"
        message = (
            f"rate limit exceeded: at most {over} per {caller} (CPFLOW_RATE_LIMIT or this "
            f"key's CPFLOW_KEY_LIMITS); retry in {retry} s"
        )
        headers = [(b"retry-after", str(retry).encode())]
        await send_error(scope, send, 429, ErrorCode.RATE_LIMITED, message, headers)
        return True

    async def refuse_address(self, scope: Scope, send: Send) -> bool:
        """For a request that failed auth: count it per client address under
        CPFLOW_RATE_LIMIT; past it, answer 429 (instead of the 401) and return True."""
        return await self.refuse(scope, send, _address(scope), self.settings.rate_limit)


class RateLimitMiddleware:
    """429 with Retry-After past a caller's request rate; fails open when storage is down."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.limiter.enabled or not is_guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        who = scope.get("state", {}).get("client") or _address(scope)
        limit = limits_for(self.limiter.settings, who).rate_limit
        if not await self.limiter.refuse(scope, send, who, limit):
            await self.app(scope, receive, send)
