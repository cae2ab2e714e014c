"""Bounds of a cpflow-serve process: read deadlines on requests, and a bounded exit.

Shutdown: uvicorn stops accepting on SIGTERM and gives requests in flight
CPFLOW_SHUTDOWN_TIMEOUT_S, then cancels them; but a computation already running in an
inference thread cannot be cancelled, and the interpreter waits for it at exit (17 s seen).
:func:`exit_soon` (called once the app has shut down, only in cpflow-serve's processes) ends
the process shortly after instead.

uvicorn bounds only the idle time between requests on a kept-alive connection; a client that
sends half a request line, or trickles its headers or body a byte at a time, holds its
connection (and a file descriptor) for ever. This protocol closes a connection whose request
headers are not complete ``header_timeout_s`` after the request began (or after connecting),
or whose body is not complete ``body_timeout_s`` after the headers; the application then sees
the client as disconnected.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import get_settings

__all__ = ["BoundedHttpProtocol", "exit_soon"]

EXIT_DELAY_S = 1.0
"""How long a shut-down cpflow-serve process may still take to exit on its own."""


def exit_soon(delay_s: float = EXIT_DELAY_S) -> None:
    """End this process ``delay_s`` from now unless it ended by then (a daemon timer: it does
    not keep the process alive, and it fires while the interpreter waits for busy threads)."""
    timer = threading.Timer(delay_s, os._exit, (0,))
    timer.daemon = True
    timer.start()


log = logging.getLogger("cpflow.server")


class BoundedHttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus a deadline on reading each request's headers and body."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.header_timeout_s = settings.header_timeout_s
        self.body_timeout_s = settings.body_timeout_s
        self._deadline: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expire, what, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, what: str, seconds: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        log.warning(
            "closing a connection whose request %s took over %g s",
            what,
            seconds,
            extra={"client": self.client},
        )
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()

    # -- uvicorn's hooks -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout_s, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self.header_timeout_s, "headers")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(self.body_timeout_s, "body")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
