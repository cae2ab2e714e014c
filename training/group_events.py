"""The wire between a worker and the torchrun group it launched for one job: rank 0 prints
one JSON event per line behind :data:`EVENT_MARK` (pids, progress, result), and every process
of the group dies with its parent (Linux parent-death signals)."""

from __future__ import annotations

import ctypes
import json
import signal
from typing import Any

__all__ = ["EVENT_MARK", "die_with_parent", "emit_event", "parse_event"]

EVENT_MARK = "CPFLOW-EVENT "
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (no-op elsewhere)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):  # not Linux: the group is still ended by its pgid
        pass


def emit_event(event: dict[str, Any]) -> None:
    """Print ``event`` on stdout as one marked line (what the worker reads)."""
    print(EVENT_MARK + json.dumps(event), flush=True)


def parse_event(line: str) -> dict[str, Any] | None:
    """The event on a marked stdout line, or None for any other line."""
    return json.loads(line[len(EVENT_MARK) :]) if line.startswith(EVENT_MARK) else None
