"""Bearer-token auth for the /v1 routes.

Enforcement is a pure ASGI middleware (:class:`ApiKeyMiddleware`) so it runs before the body is
read and covers every /v1 route, including routers added later. :data:`bearer_scheme` is
attached to the /v1 routers only so that OpenAPI shows the lock and /docs offers "Authorize".
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence

from fastapi.security import HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import error_payload

__all__ = ["ApiKeyMiddleware", "bearer_scheme", "key_matches"]

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


class ApiKeyMiddleware:
    """Rejects /v1 requests without a valid ``Authorization: Bearer <key>`` with a 401 envelope."""

    def __init__(self, app: ASGIApp, keys: Sequence[str], prefix: str = "/v1") -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or not _under(scope["path"], self.prefix):
            await self.app(scope, receive, send)
            return
        header = ""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip() and key_matches(token.strip(), self.keys):
            await self.app(scope, receive, send)
            return
        message = (
            "missing Authorization header; send 'Authorization: Bearer <api key>'"
            if not header
            else "invalid API key; send 'Authorization: Bearer <api key>' with a configured key"
        )
        body = json.dumps(error_payload("unauthorized", message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="cpflow"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")
