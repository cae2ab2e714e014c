"""JobQueue and JobRecorder against the real Redis, without a worker: the record protocol.

Each test has its own queue name (see conftest), so records and RQ keys never mix.
"""

from __future__ import annotations

import time

import pytest
import redis
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer

from service.queue import (
    JOB_FUNCTION,
    JobNotCancellable,
    JobNotFound,
    JobQueue,
    QueueUnavailable,
    connect,
)
from tests.helpers.procs import wait_for
from training.jobs import JobRecorder

SPEC = {"model_name": "m", "dataset": {"builtin": "two_moons"}, "model": {}, "training": {}}


@pytest.fixture
def queue(redis_conn: redis.Redis, queue_name: str) -> JobQueue:
    return JobQueue(
        redis_conn, queue_name=queue_name, retention_s=300, lease_s=1.0, heartbeat_s=0.2
    )


def _recorder(queue: JobQueue, job_id: str) -> JobRecorder:
    spec = Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer).kwargs["spec"]
    return JobRecorder(queue.connection, spec["runtime"])


def test_submit_writes_record_and_enqueues_by_dotted_path(queue: JobQueue) -> None:
    job = queue.submit(SPEC, model_name="m", dataset_id=None, timeout_s=123)
    assert job["status"] == "queued" and job["result"] is None and job["error"] is None
    rq_job = Job.fetch(job["id"], connection=queue.connection, serializer=JSONSerializer)
    assert rq_job.func_name == JOB_FUNCTION
    assert rq_job.timeout == 123
    assert rq_job.get_status() == RQStatus.QUEUED
    runtime = rq_job.kwargs["spec"]["runtime"]
    assert runtime["job_id"] == job["id"] and runtime["timeout_s"] == 123
    assert queue.get(job["id"])["status"] == "queued"
    # Default timeout comes from the queue's setting.
    other = queue.submit(SPEC, model_name="m", dataset_id=None)
    assert Job.fetch(other["id"], connection=queue.connection).timeout == queue.job_timeout_s


def test_list_is_newest_first_and_filters_by_status(queue: JobQueue) -> None:
    ids = [queue.submit(SPEC, model_name=f"m{i}", dataset_id=None)["id"] for i in range(3)]
    assert [j["id"] for j in queue.list_jobs()] == ids[::-1]
    queue.cancel(ids[1])
    assert [j["id"] for j in queue.list_jobs(status="cancelled")] == [ids[1]]
    assert [j["id"] for j in queue.list_jobs(status="queued")] == [ids[2], ids[0]]
    assert [j["id"] for j in queue.list_jobs(limit=1)] == [ids[2]]


def test_cancel_queued_is_immediate_and_final(queue: JobQueue) -> None:
    job_id = queue.submit(SPEC, model_name="m", dataset_id=None)["id"]
    job = queue.cancel(job_id)
    assert job["status"] == "cancelled" and job["finished_at"] is not None
    rq_job = Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer)
    assert rq_job.get_status() == RQStatus.CANCELED  # a worker will never pick it up
    assert job_id not in queue.rq_queue.job_ids
    with pytest.raises(JobNotCancellable):
        queue.cancel(job_id)
    with pytest.raises(JobNotFound):
        queue.cancel("nope")
    # A worker that dequeued it anyway (race) sees the cancel and never starts it.
    assert _recorder(queue, job_id).start() is False
    assert queue.get(job_id)["status"] == "cancelled"


def test_cancel_running_sets_the_flag_the_worker_polls(queue: JobQueue) -> None:
    job_id = queue.submit(SPEC, model_name="m", dataset_id=None)["id"]
    rec = _recorder(queue, job_id)
    assert rec.start() is True
    assert queue.get(job_id)["status"] == "running"
    assert rec.should_stop() is False
    job = queue.cancel(job_id)
    assert job["status"] == "running" and job["cancel_requested"] is True
    wait_for(rec.should_stop, 5, "the worker to see the cancel flag")  # polled every 0.5 s
    assert rec.finish("cancelled", error="stopped") is True
    assert queue.get(job_id)["status"] == "cancelled"


def test_worker_lifecycle_progress_result_and_retention(queue: JobQueue) -> None:
    job_id = queue.submit(SPEC, model_name="m", dataset_id="abc")["id"]
    rec = _recorder(queue, job_id)
    rec.start()
    rec.progress({"iteration": 5, "total": 10, "val_nll": 1.5}, force=True)
    job = queue.get(job_id)
    assert job["progress"]["iteration"] == 5 and job["started_at"] is not None
    assert queue.active_jobs_using("abc") == [job_id]
    assert queue.connection.ttl(f"cpflow:{queue.queue_name}:job:{job_id}") == -1  # no expiry
    rec.finish("succeeded", result={"model": "m", "version": 1, "test_nll": 0.5})
    job = queue.get(job_id)
    assert job["status"] == "succeeded" and job["result"]["version"] == 1
    assert queue.active_jobs_using("abc") == []
    # Finished records expire after the configured retention (not RQ's 500 s result TTL).
    ttl = queue.connection.ttl(f"cpflow:{queue.queue_name}:job:{job_id}")
    assert 0 < ttl <= queue.retention_s
    # A final status is never overwritten by a late writer.
    assert rec.finish("failed", error="late") is False
    assert queue.get(job_id)["status"] == "succeeded"


def test_expired_records_leave_the_list(queue: JobQueue) -> None:
    job_id = queue.submit(SPEC, model_name="m", dataset_id=None)["id"]
    queue.connection.delete(f"cpflow:{queue.queue_name}:job:{job_id}")  # as if expired
    assert queue.list_jobs() == []
    assert queue.connection.zcard(f"cpflow:{queue.queue_name}:jobs") == 0
    with pytest.raises(JobNotFound):
        queue.get(job_id)


def test_silent_running_job_fails_after_the_lease(queue: JobQueue) -> None:
    job_id = queue.submit(SPEC, model_name="m", dataset_id=None)["id"]
    rec = _recorder(queue, job_id)
    rec.start()
    rec._stop.set()  # the heartbeat stops, as when the worker is SIGKILLed
    assert queue.get(job_id)["status"] == "running"  # within the lease: still running
    time.sleep(queue.lease_s + 0.3)
    job = queue.get(job_id)
    assert job["status"] == "failed"
    assert "worker lost" in job["error"] and job["finished_at"] is not None


def test_heartbeat_keeps_a_live_job_running(queue: JobQueue) -> None:
    job_id = queue.submit(SPEC, model_name="m", dataset_id=None)["id"]
    rec = _recorder(queue, job_id)
    rec.start()
    try:
        time.sleep(queue.lease_s * 2)
        assert queue.get(job_id)["status"] == "running"
    finally:
        rec.finish("cancelled")


def test_job_rq_failed_without_record_end_is_reported(queue: JobQueue) -> None:
    """A horse that died before the job function could record anything (RQ says failed)."""
    job_id = queue.submit(SPEC, model_name="m", dataset_id=None)["id"]
    rq_job = Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer)
    rq_job.set_status(RQStatus.FAILED)
    job = queue.get(job_id)
    assert job["status"] == "failed" and "worker ended the job" in job["error"]


def test_unreachable_redis_raises_queue_unavailable() -> None:
    from tests.helpers.ports import free_port

    queue = JobQueue(connect(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5))
    assert queue.ping() is False
    for call in (
        lambda: queue.list_jobs(),
        lambda: queue.get("x"),
        lambda: queue.cancel("x"),
        lambda: queue.submit(SPEC, model_name="m", dataset_id=None),
        lambda: queue.active_jobs_using("x"),
    ):
        with pytest.raises(QueueUnavailable, match="unreachable"):
            call()


def test_a_job_whose_record_left_running_stops_and_writes_nothing(queue: JobQueue) -> None:
    """Lease expired (e.g. a long Redis outage): the API said failed, so the job must stop;
    and a heartbeat must never recreate an expired or purged record."""
    job_id = queue.submit(SPEC, model_name="m", dataset_id=None)["id"]
    key = f"cpflow:{queue.queue_name}:job:{job_id}"
    rec = _recorder(queue, job_id)
    rec.start()
    rec._stop.set()  # silence the heartbeat until the lease runs out
    time.sleep(queue.lease_s + 0.3)
    assert queue.get(job_id)["status"] == "failed"
    rec.progress({"iteration": 9}, force=True)
    assert rec.should_stop() is True
    assert queue.get(job_id)["progress"]["iteration"] == 0  # the late write was refused
    queue.connection.delete(key)
    rec._write_if_running("heartbeat_at", "1")
    assert queue.connection.exists(key) == 0
