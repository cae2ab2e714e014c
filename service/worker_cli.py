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
import time

import redis
from rq.serializers import JSONSerializer

from service.queue import JobQueue, JobSettings, connect
from service.rq_worker import GracefulWorker as Worker
from service.settings import Settings

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cpflow-worker",
        description="Run training jobs queued by the cpflow service (one worker per GPU: "
        "pin each with CUDA_VISIBLE_DEVICES).",
    )
    p.add_argument(
        "--redis-url",
        help="Redis holding the job queue (default: CPFLOW_REDIS_URL, else "
        "redis://127.0.0.1:6379/0)",
    )
    p.add_argument("--queue", help="queue name (default: CPFLOW_QUEUE_NAME, else cpflow-training)")
    p.add_argument("--name", help="worker name (default: host-pid)")
    p.add_argument(
        "--burst", action="store_true", help="exit once the queue is empty (default: wait)"
    )
    p.add_argument(
        "--max-jobs", type=int, default=None, help="exit after this many jobs (default: no limit)"
    )
    p.add_argument(
        "--max-reconnect-wait",
        type=float,
        default=5.0,
        help="longest pause (s) between attempts to reach Redis again after it went away "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--log-level", help="DEBUG, INFO, WARNING or ERROR (default: CPFLOW_LOG_LEVEL, else INFO)"
    )
    p.add_argument(
        "--store-url",
        help="the model store as s3://bucket/prefix or file:///path (default: "
        "CPFLOW_STORE_URL, else the folder CPFLOW_STORE_DIR)",
    )
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


def _wait_for_redis(connection: redis.Redis, max_wait_s: float) -> None:
    delay = 0.5
    while True:
        try:
            connection.ping()
            return
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            time.sleep(delay)
            delay = min(delay * 2, max_wait_s)


def main(argv: list[str] | None = None) -> int:
    """Start the worker loop; returns when it is stopped (SIGTERM: the current job finishes
    within CPFLOW_WORKER_SHUTDOWN_GRACE_S or is handed back to the queue)."""
    args = _parser().parse_args(argv)
    settings = Settings()
    redis_url = args.redis_url or settings.redis_url
    queue_name = args.queue or JobSettings().queue_name
    level = (args.log_level or settings.log_level).upper()
    # The job function reads the store from the environment (it does not import service).
    os.environ["CPFLOW_STORE_DIR"] = str(settings.store_dir.resolve())
    if args.store_url:
        os.environ["CPFLOW_STORE_URL"] = args.store_url
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")
    _preload()
    log = logging.getLogger("cpflow.worker")
    base_name = args.name or f"cpflow-{socket.gethostname()}-{os.getpid()}"
    connection = connect(redis_url, timeout_s=10.0)
    jobs = JobQueue(connection, queue_name=queue_name)
    restarts = 0
    while True:
        worker = Worker(
            [queue_name],
            connection=connection,
            serializer=JSONSerializer,
            name=base_name if restarts == 0 else f"{base_name}-r{restarts}",
        )
        worker.shutdown_grace_s = settings.worker_shutdown_grace_s
        worker.hand_back = jobs.hand_back
        # RQ backs off up to 60 s between reconnection attempts; cap it so that a worker
        # resumes within a few seconds of Redis coming back.
        worker.max_connection_wait_time = args.max_reconnect_wait
        try:
            worker.work(burst=args.burst, max_jobs=args.max_jobs, logging_level=level)
            return 0
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            # RQ only survives an outage while it waits for work; one that hits its
            # bookkeeping (e.g. right after a job) ends work(). Wait for Redis, start afresh.
            log.error("lost Redis (%s); waiting for it to come back", exc)
            _wait_for_redis(connection, args.max_reconnect_wait)
            restarts += 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
