"""The worker honours SIGTERM within a bound: a cancel after SIGTERM ends it, and a job that
outlasts the shutdown grace is handed back to the queue (another worker resumes it)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import redis
from rq.serializers import JSONSerializer

from service.queue import JobQueue
from service.rq_worker import GracefulWorker
from tests.helpers.procs import REDIS_URL, Proc, stack_env, start_worker, wait_for

pytestmark = pytest.mark.integration

LONG_SPEC = {
    "model_name": "chaos",
    "dataset": {"builtin": "two_moons", "num_samples": 512},
    "model": {"blocks": 1, "hidden": 8, "depth": 1},
    "training": {"iterations": 1_000_000, "batch_size": 32, "val_every": 50, "lr": 1e-3},
    "plots": False,
}


def _queue(queue_name: str, store: Path) -> JobQueue:
    conn = redis.Redis.from_url(REDIS_URL)
    return JobQueue(
        conn, queue_name=queue_name, lease_s=5.0, heartbeat_s=0.25, store_dir=str(store)
    )


def _training(jobs: JobQueue, job_id: str) -> bool:
    view = jobs.get(job_id)
    return view["status"] == "running" and (view["progress"] or {}).get("iteration", 0) > 0


def _exited(proc: Proc) -> bool:
    return proc.popen.poll() is not None


def test_sigterm_then_cancel_exits(tmp_path: Path, queue_name: str) -> None:
    env = stack_env(tmp_path / "store", queue_name)
    worker = start_worker(env, tmp_path / "worker.log")
    jobs = _queue(queue_name, tmp_path / "store")
    try:
        job = jobs.submit(LONG_SPEC, model_name="chaos", dataset_id=None)
        wait_for(lambda: _training(jobs, job["id"]), 90, "the job to train")
        worker.popen.send_signal(signal.SIGTERM)
        time.sleep(2.0)  # the worker is now waiting for its job
        jobs.cancel(job["id"])
        try:
            wait_for(lambda: _exited(worker), 15, "the worker to exit after SIGTERM + cancel")
        except AssertionError:
            raise AssertionError(worker.tail()) from None
        assert jobs.get(job["id"])["status"] == "cancelled"
    finally:
        worker.stop()


def test_sigterm_hands_a_long_job_back_within_the_grace(tmp_path: Path, queue_name: str) -> None:
    env = {**stack_env(tmp_path / "store", queue_name), "CPFLOW_WORKER_SHUTDOWN_GRACE_S": "2"}
    first = start_worker(env, tmp_path / "worker0.log")
    jobs = _queue(queue_name, tmp_path / "store")
    second = None
    try:
        job = jobs.submit(LONG_SPEC, model_name="chaos", dataset_id=None)
        wait_for(lambda: _training(jobs, job["id"]), 90, "the job to train")
        first.popen.send_signal(signal.SIGTERM)
        try:
            wait_for(lambda: _exited(first), 15, "the worker to exit after its shutdown grace")
        except AssertionError:
            raise AssertionError(first.tail()) from None
        assert jobs.get(job["id"])["status"] == "queued", first.tail()
        second = start_worker(env, tmp_path / "worker1.log")
        wait_for(lambda: _training(jobs, job["id"]), 90, "another worker to resume the job")
        jobs.cancel(job["id"])
        wait_for(lambda: jobs.get(job["id"])["status"] == "cancelled", 30, "the cancel")
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_leaving_the_command_channel_is_bounded(redis_conn: redis.Redis, queue_name: str) -> None:
    """RQ joins its channel thread without a bound; when the thread saw the unsubscribe reply
    first it sleeps out its 60 s poll (the worker hung after "unsubscribing from channel")."""
    worker = GracefulWorker([queue_name], connection=redis_conn, serializer=JSONSerializer)
    worker.subscribe()
    assert worker.pubsub is not None
    worker.pubsub.unsubscribe()  # the thread reads the reply and waits for a subscription
    time.sleep(0.5)
    start = time.monotonic()
    worker.unsubscribe()
    assert time.monotonic() - start < 5.0
