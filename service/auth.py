"""Bearer-token auth, roles and the audit log for the /v1 and /v2 routes.

Enforcement is a pure ASGI middleware (:class:`ApiKeyMiddleware`) so it runs before the body is
read and covers every /v1 and /v2 route, including routers added later; the /v2 health probes
stay open like /healthz (orchestrators probe without credentials). :data:`bearer_scheme` is
attached to the routers only so that OpenAPI shows the lock and /docs offers "Authorization".

The middleware names the caller in ``scope["state"]``: ``client`` (:func:`key_id` of the key,
for quotas and rate limits; None when the server has no keys), ``tenant`` and ``roles`` (see
service.tenancy). A key without the role a route needs gets 403. A request that fails auth
goes to the optional ``gate`` first (the rate limiter: per client address), which may answer
it itself (429) instead of the 401. Every call that changes state (one needing the train or
admin role) writes one audit line: key, tenant, method, path, status.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi.security import HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.error_codes import ErrorCode
from service.middleware import is_guarded, send_error
from service.tenancy import OPEN, Identity, KeyRing, Role, key_id, key_matches, required_role

__all__ = ["ApiKeyMiddleware", "bearer_scheme", "key_id", "key_matches"]

audit_log = logging.getLogger("cpflow.audit")

bearer_scheme = HTTPBearer(
    auto_error=False,
    description="An API key from CPFLOW_API_KEYS or CPFLOW_API_KEY_HASHES (only when the "
    "server sets any).",
)


def _authorization(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return value.decode("latin-1")
    return ""


class ApiKeyMiddleware:
    """Rejects /v1 and /v2 requests without a valid ``Authorization: Bearer <key>`` with a 401
    (in the envelope, or the protocol's error shape under /v2), unless ``gate(scope, send)``
    answered them already (returns True), and requests whose key lacks the route's role with
    a 403."""

    def __init__(
        self,
        app: ASGIApp,
        ring: KeyRing,
        gate: Callable[[Scope, Send], Awaitable[bool]] | None = None,
    ) -> None:
        self.app = app
        self.ring = ring
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        role = required_role(scope["method"], scope["path"])
        audited = role is not Role.READ
        status: list[int] = []

        async def recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        identity, admitted = await self._admit(scope, recording if audited else send, role)
        if admitted and identity is not None:
            state = scope.setdefault("state", {})
            state.update(client=identity.key_id, tenant=identity.tenant, roles=identity.roles)
            await self.app(scope, receive, recording if audited else send)
        if audited:
            who = identity or Identity(None, "unknown", frozenset())
            audit_log.info(
                "audit",
                extra={
                    "event": "audit",
                    "key": who.key_id,
                    "tenant": who.tenant,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status[0] if status else None,
                },
            )

    async def _admit(self, scope: Scope, send: Send, role: Role) -> tuple[Identity | None, bool]:
        """The caller's identity (None: no valid key) and whether it may go on; when not, it
        was answered (401, 403 or the gate's 429)."""
        if not self.ring:
            return OPEN, True
        header = _authorization(scope)
        scheme, _, token = header.partition(" ")
        token = token.strip()
        identity = self.ring.identify(token) if scheme.lower() == "bearer" and token else None
        if identity is None:
            if self.gate is None or not await self.gate(scope, send):
                message = (
                    "missing Authorization header; send 'Authorization: Bearer <api key>'"
                    if not header
                    else "invalid API key; send 'Authorization: Bearer <api key>' with a "
                    "configured key"
                )
                challenge = [(b"www-authenticate", b'Bearer realm="cpflow"')]
                await send_error(scope, send, 401, ErrorCode.UNAUTHORIZED, message, challenge)
            return None, False
        if role not in identity.roles:
            held = ", ".join(sorted(identity.roles))
            await send_error(
                scope,
                send,
                403,
                ErrorCode.FORBIDDEN,
                f"this API key has the role(s) {held}; {scope['method']} {scope['path']} "
                f"needs the {role} role",
            )
            return identity, False
        return identity, True
