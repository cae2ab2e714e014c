"""Bearer-token auth for the /v1 and /v2 routes.

Enforcement is a pure ASGI middleware (:class:`ApiKeyMiddleware`) so it runs before the body is
read and covers every /v1 and /v2 route, including routers added later; the /v2 health probes
stay open like /healthz (orchestrators probe without credentials). :data:`bearer_scheme` is
attached to the routers only so that OpenAPI shows the lock and /docs offers "Authorize".

The middleware also names the caller for quotas and rate limits: ``scope["state"]["client"]``
is :func:`key_id` of the key presented (or None when the server has no keys). A request that
fails auth goes to the optional ``gate`` first (the rate limiter: per client address), which may
answer it itself (429) instead of the 401.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence

from fastapi.security import HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from service.error_codes import ErrorCode
from service.middleware import is_guarded, send_error

__all__ = ["ApiKeyMiddleware", "bearer_scheme", "key_id", "key_matches"]

bearer_scheme = HTTPBearer(
    auto_error=False,
    description="An API key from CPFLOW_API_KEYS (only when the server sets any).",
)


def key_matches(presented: str, keys: Sequence[bytes]) -> bool:
    """Constant-time check of a presented key against every configured key."""
    token = presented.encode()
    ok = False
    for key in keys:
        # Compare against all keys, no early exit: timing does not reveal which one matched.
        ok |= hmac.compare_digest(token, key)
    return ok


def key_id(key: str) -> str:
    """A stable, non-secret name of an API key (for Redis keys and logs)."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]


class ApiKeyMiddleware:
    """Rejects /v1 and /v2 requests without a valid ``Authorization: Bearer <key>`` with a 401
    (in the envelope, or the protocol's error shape under /v2), unless ``gate(scope, send)``
    answered them already (returns True)."""

    def __init__(
        self,
        app: ASGIApp,
        keys: Sequence[str],
        gate: Callable[[Scope, Send], Awaitable[bool]] | None = None,
    ) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or not is_guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        header = ""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token and key_matches(token, self.keys):
            scope.setdefault("state", {})["client"] = key_id(token)
            await self.app(scope, receive, send)
            return
        if self.gate is not None and await self.gate(scope, send):
            return  # answered (429) by the gate
        message = (
            "missing Authorization header; send 'Authorization: Bearer <api key>'"
            if not header
            else "invalid API key; send 'Authorization: Bearer <api key>' with a configured key"
        )
        challenge = [(b"www-authenticate", b'Bearer realm="cpflow"')]
        await send_error(scope, send, 401, ErrorCode.UNAUTHORIZED, message, challenge)
