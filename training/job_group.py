"""One multi-process training job, run by torchrun on the worker's machine:

    python -m torch.distributed.run --standalone --nproc-per-node N -m training.job_group SPEC

Every rank trains (training.distributed); rank 0 publishes and reports on stdout, one JSON
event per line (training.group_events): the group's pids first, then its stages and progress,
then the result.
The worker process that launched the group keeps the job record (heartbeat, progress, cancel):
it ends the group by signalling its process group. Each rank dies with torchrun, and torchrun
with the worker (Linux parent-death signals), so a killed worker leaves no rank behind.
"""

from __future__ import annotations

import json
import os
import sys

from torch import distributed

from training.distributed import init_from_env
from training.group_events import die_with_parent, emit_event
from training.jobs import execute_spec, progress_values
from training.settings import TrainingSettings
from training.trainer import ProgressEvent

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """One rank of the group: train the spec in ``argv[0]``; rank 0 reports its events."""
    die_with_parent()
    with open((argv or sys.argv[1:])[0]) as fh:
        spec = json.load(fh)
    group = init_from_env(TrainingSettings().device or "cpu")
    pids: list[int | None] = [None] * group.world
    distributed.all_gather_object(pids, os.getpid())
    if group.main:
        emit_event({"pids": pids})

    def progress(event: ProgressEvent) -> None:
        emit_event(
            {
                "progress": progress_values(event),
                "force": event.phase != "train",
                "phase": event.phase,
            }
        )

    def stage(phase: str, details: dict) -> None:
        if group.main:
            emit_event({"stage": phase, "details": details})

    try:
        result = execute_spec(spec, progress=progress, on_stage=stage)
    finally:
        distributed.destroy_process_group()
    if group.main:
        emit_event({"result": result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
