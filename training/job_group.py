"""One multi-process training job, run by torchrun on the worker's machine:

    python -m torch.distributed.run --standalone --nproc-per-node N -m training.job_group SPEC

Every rank trains (training.distributed); rank 0 publishes and reports on stdout, one JSON
event per line behind ``EVENT_MARK``: the group's pids first, then progress, then the result.
The worker process that launched the group keeps the job record (heartbeat, progress, cancel):
it ends the group by signalling its process group. Each rank dies with torchrun, and torchrun
with the worker (Linux parent-death signals), so a killed worker leaves no rank behind.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from typing import Any

from torch import distributed

__all__ = ["EVENT_MARK", "die_with_parent", "main"]

EVENT_MARK = "CPFLOW-EVENT "
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (no-op elsewhere)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):  # not Linux: the group is still ended by its pgid
        pass


def _emit(event: dict[str, Any]) -> None:
    print(EVENT_MARK + json.dumps(event), flush=True)


def main(argv: list[str] | None = None) -> int:
    from training.distributed import init_from_env
    from training.jobs import execute_spec, progress_values

    die_with_parent()
    with open((argv or sys.argv[1:])[0]) as fh:
        spec = json.load(fh)
    group = init_from_env(os.environ.get("CPFLOW_DEVICE", "cpu"))
    pids = [None] * group.world
    distributed.all_gather_object(pids, os.getpid())
    if group.main:
        _emit({"pids": pids})

    def progress(event: Any) -> None:
        _emit({"progress": progress_values(event), "force": event.phase != "train"})

    try:
        result = execute_spec(spec, progress=progress)
    finally:
        distributed.destroy_process_group()
    if group.main:
        _emit({"result": result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
