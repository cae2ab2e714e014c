"""``cpflow-worker``: an RQ worker that runs training jobs from the cpflow queue.

Run one worker per GPU and pin each to its device, e.g.::

    CUDA_VISIBLE_DEVICES=0 cpflow-worker &
    CUDA_VISIBLE_DEVICES=1 cpflow-worker &

Each job runs in a forked work horse; CUDA is touched only there (never in this parent
process, where forking after CUDA initialisation would break the child). The worker reads the
same ``CPFLOW_*`` settings as the service (redis URL, store dir, queue name, device).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import socket
import sys

from rq import Worker
from rq.serializers import JSONSerializer

from service.queue import JobSettings, connect

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cpflow-worker",
        description="Run training jobs queued by the cpflow service (one worker per GPU: "
        "pin each with CUDA_VISIBLE_DEVICES).",
    )
    p.add_argument("--redis-url", help="default: CPFLOW_REDIS_URL")
    p.add_argument("--queue", help="queue name (default: CPFLOW_QUEUE_NAME, else cpflow-training)")
    p.add_argument("--name", help="worker name (default: host-pid)")
    p.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    p.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    p.add_argument(
        "--max-reconnect-wait",
        type=float,
        default=5.0,
        help="longest pause (s) between attempts to reach Redis again after it went away",
    )
    p.add_argument("--log-level", default=os.environ.get("CPFLOW_LOG_LEVEL", "INFO"))
    return p


def _preload() -> None:
    """Import the training code (and torch's lazily imported optimiser machinery) once here,
    so each forked job starts at once. CPU only: CUDA is never touched in this process."""
    try:
        importlib.import_module("training.jobs")
        importlib.import_module("training.pipeline")
        importlib.import_module("training.plots")
        import torch

        torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # imports torch._dynamo
    except ImportError as exc:  # pragma: no cover - reported; the job will fail with it
        logging.getLogger("cpflow.worker").warning("could not preload training code: %s", exc)


def main(argv: list[str] | None = None) -> int:
    """Start the worker loop; returns when it is stopped (SIGTERM finishes the current job)."""
    args = _parser().parse_args(argv)
    from service.settings import Settings

    settings = Settings()
    redis_url = args.redis_url or settings.redis_url
    queue_name = args.queue or JobSettings().queue_name
    # The job function reads the store root from the environment (it does not import service).
    os.environ.setdefault("CPFLOW_STORE_DIR", str(settings.store_dir.resolve()))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    _preload()
    connection = connect(redis_url, timeout_s=10.0)
    worker = Worker(
        [queue_name],
        connection=connection,
        serializer=JSONSerializer,
        name=args.name or f"cpflow-{socket.gethostname()}-{os.getpid()}",
    )
    # RQ backs off up to 60 s between reconnection attempts; cap it so that a worker resumes
    # within a few seconds of Redis coming back.
    worker.max_connection_wait_time = args.max_reconnect_wait
    worker.work(burst=args.burst, max_jobs=args.max_jobs, logging_level=args.log_level.upper())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
