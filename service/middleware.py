"""Pure ASGI middlewares: request context (id, access log, metrics) and the body-size cap.

Pure ASGI rather than ``BaseHTTPMiddleware``: they add microseconds, not a task per request,
which matters for the small-request throughput the service is benchmarked on.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.error_codes import ErrorCode
from service.errors import error_content
from service.logging import request_id_var
from service.metrics import ServiceMetrics

__all__ = [
    "API_PREFIXES",
    "OPEN_PREFIXES",
    "BodyLimitMiddleware",
    "RequestContextMiddleware",
    "is_guarded",
    "send_error",
]

access_log = logging.getLogger("cpflow.access")
_RID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


API_PREFIXES = ("/v1", "/v2")
"""The API's routes: behind the API keys, the rate limits and the quotas."""
OPEN_PREFIXES = ("/v2/health",)
"""API routes that stay open (orchestrators' probes, like /healthz)."""


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def is_guarded(path: str) -> bool:
    """Whether ``path`` is an API route that auth and rate limits apply to."""
    return any(_under(path, p) for p in API_PREFIXES) and not any(
        _under(path, p) for p in OPEN_PREFIXES
    )


async def send_error(
    scope: Scope,
    send: Send,
    status: int,
    code: ErrorCode,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """An error (the envelope, or the protocol's shape under /v2) sent from a middleware;
    RequestContextMiddleware (outermost) adds the request id header."""
    body = json.dumps(error_content(scope["path"], code, message)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestContextMiddleware:
    """Assigns a request id (echoing a valid ``X-Request-ID``), logs one JSON line per request
    and records request counts and latency by route template and model."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServiceMetrics,
        route_template: Callable[[object], str] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.route_template = route_template or (lambda r: getattr(r, "path", None) or "")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                rid = candidate if _RID_RE.match(candidate) else None
                break
        rid = rid or uuid.uuid4().hex
        token = request_id_var.set(rid)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        rid_header = (b"x-request-id", rid.encode())
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = self.route_template(route) if route is not None else "unmatched"
            model = state.get("metric_model", "")
            self.metrics.requests.labels(scope["method"], template, str(status)).inc()
            self.metrics.latency.labels(template, model).observe(elapsed)
            access_log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": template,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "model": model or None,
                },
            )
            request_id_var.reset(token)


class BodyLimitMiddleware:
    """Answers 413 (in the envelope) when a request body exceeds its limit.

    A declared ``Content-Length`` over the limit is refused before reading; a chunked body is
    buffered up to the limit and refused as soon as it passes it.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await send_error(
                        scope, send, 400, ErrorCode.BAD_REQUEST, "invalid Content-Length"
                    )
                    return
                break
        too_big = f"request body exceeds the limit of {limit} bytes; send fewer rows per request"
        if declared is not None:
            if declared > limit:
                await send_error(scope, send, 413, ErrorCode.PAYLOAD_TOO_LARGE, too_big)
                return
            await self.app(scope, receive, send)
            return
        # No length given (chunked): buffer up to the limit, then replay to the app.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await send_error(scope, send, 413, ErrorCode.PAYLOAD_TOO_LARGE, too_big)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
