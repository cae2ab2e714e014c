"""Jobs survive a Redis restart in the README's set-up (scripts/up.sh has ensure_redis.sh start
Redis with an append-only file under var/), and a job whose record vanished under a running
worker is failed as lost instead of logged as "Job OK"."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from service.queue import JobQueue, record_key
from tests.chaos.test_worker_shutdown import LONG_SPEC, _queue, _training
from tests.helpers.procs import ROOT, free_port, stack_env, start_worker, wait_for

pytestmark = pytest.mark.integration

SPEC = {"model_name": "m", "dataset": {"builtin": "two_moons"}, "model": {}, "training": {}}


def _ensure_redis(url: str, data_dir: Path) -> str:
    env = {
        **os.environ,
        "CPFLOW_REDIS_URL": url,
        "CPFLOW_REDIS_DIR": str(data_dir),
        "CPFLOW_NO_INSTALL": "1",
    }
    res = subprocess.run(
        ["bash", "scripts/ensure_redis.sh"],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def _stop(conn: redis.Redis) -> None:
    """SIGTERM to the redis-server the script started (it writes its append-only file)."""
    pid = int(conn.info("server")["process_id"])
    os.kill(pid, signal.SIGTERM)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, 20, "redis-server to stop")


def test_up_sh_starts_redis_with_persistence() -> None:
    up = (ROOT / "scripts" / "up.sh").read_text()
    assert up.index("CPFLOW_REDIS_DIR") < up.index("scripts/ensure_redis.sh")


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_a_queued_job_survives_a_redis_restart(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    out = _ensure_redis(url, tmp_path / "redis")
    conn = redis.Redis.from_url(url)
    try:
        assert "append-only file" in out
        jobs = JobQueue(conn, queue_name="restart-test")
        job = jobs.submit(SPEC, model_name="m", dataset_id=None)
        _stop(conn)
        _ensure_redis(url, tmp_path / "redis")  # up.sh again, after the restart
        conn = redis.Redis.from_url(url)
        jobs = JobQueue(conn, queue_name="restart-test")
        assert jobs.get(job["id"])["status"] == "queued"
        assert job["id"] in jobs.rq_queue.job_ids  # a worker will still pick it up
    finally:
        try:
            _stop(conn)
        except redis.exceptions.ConnectionError:
            pass


def test_a_job_whose_record_vanished_is_failed_as_lost(
    tmp_path: Path, queue_name: str, redis_conn: redis.Redis
) -> None:
    env = stack_env(tmp_path / "store", queue_name)
    worker = start_worker(env, tmp_path / "worker.log")
    jobs = _queue(queue_name, tmp_path / "store")
    try:
        job = jobs.submit(LONG_SPEC, model_name="chaos", dataset_id=None)
        wait_for(lambda: _training(jobs, job["id"]), 90, "the job to train")
        redis_conn.delete(record_key(queue_name, job["id"]))  # as a Redis without its data

        def ended() -> bool:
            rq_job = Job.fetch(job["id"], connection=redis_conn, serializer=JSONSerializer)
            return rq_job.get_status() in ("failed", "finished")

        wait_for(ended, 30, "the worker to end the job")
        rq_job = Job.fetch(job["id"], connection=redis_conn, serializer=JSONSerializer)
        assert rq_job.get_status() == "failed", worker.tail()
        log = worker.log.read_text()
        assert "lost" in log and "Job OK" not in log, log
    finally:
        worker.stop()
