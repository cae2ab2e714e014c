"""Training-job queue: RQ runs the jobs, a Redis hash per job keeps its lasting record.

Why a record of our own beside RQ's job: RQ forgets a job after its result TTL and knows
nothing of training progress or graceful cancellation. The record (``<prefix>job:<id>``)
holds status, progress, result and error; it is written by the API (submit, cancel, lease
expiry) and by the job function in the worker (``training.jobs``), which receives the
record's key, the heartbeat period and the lease in ``spec["runtime"]``.

Record protocol (hash fields, all strings; JSON where noted), shared with ``training.jobs``:

    id, status, model_name, dataset_id, spec (JSON), created_at, started_at, finished_at,
    heartbeat_at (epoch seconds), progress (JSON), result (JSON), error,
    cancel_requested ("1" once a cancel is asked for), worker ("host:pid")

A job whose worker died (SIGKILL, lost machine) stops heart-beating; whoever reads it after
``lease_s`` without a heartbeat marks it failed. The API never imports training code: it
enqueues :data:`JOB_FUNCTION` by its dotted path.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

import redis
from redis import Redis
from redis.typing import EncodableT, FieldT
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer

from service.settings import (
    DEFAULT_HEARTBEAT_S,
    DEFAULT_LEASE_S,
    DEFAULT_QUEUE_NAME,
    DEFAULT_TENANT,
    JobSettings,
)

__all__ = [
    "ACTIVE",
    "DEFAULT_HEARTBEAT_S",
    "DEFAULT_LEASE_S",
    "DEFAULT_QUEUE_NAME",
    "JOB_FUNCTION",
    "TERMINAL",
    "JobNotCancellable",
    "JobNotFound",
    "JobQueue",
    "JobSettings",
    "JobStatus",
    "QueueUnavailable",
    "connect",
    "record_key",
]

JOB_FUNCTION = "training.jobs.run_training_job"
"""Dotted path of the function a worker runs; the API process never imports it."""

_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class JobStatus(StrEnum):
    """Status of a training job as the API reports it."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class QueueUnavailable(RuntimeError):
    """Redis cannot be reached; job routes answer 503 until it is back."""


class JobNotFound(KeyError):
    """No job with this id (never submitted, or older than the retention)."""


class JobNotCancellable(RuntimeError):
    """The job already ended; there is nothing to cancel."""


def connect(url: str, *, timeout_s: float = 2.0) -> Redis:
    """A Redis client that fails fast (so a Redis outage becomes a quick 503, not a hang)."""
    return Redis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        health_check_interval=30,
    )


def record_key(queue_name: str, job_id: str) -> str:
    """Redis key of one job record."""
    return f"cpflow:{queue_name}:job:{job_id}"


def _now() -> float:
    return time.time()


def _iso(ts: str | float | None) -> str | None:
    if ts in (None, ""):
        return None
    return datetime.fromtimestamp(float(ts), tz=UTC).isoformat().replace("+00:00", "Z")


def _decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _fields(values: dict[str, str]) -> dict[FieldT, EncodableT]:
    """A record's fields as redis-py's hset types them."""
    return {k: v for k, v in values.items()}


def _ids(members: object) -> list[str]:
    """Members of a sorted set of job ids (the client returns bytes)."""
    return [m.decode() for m in cast(list[bytes], members)]


def _belongs(record: dict[str, str], tenant: str) -> bool:
    """Whether a job record is ``tenant``'s (records from before tenancy: the default one)."""
    return (record.get("tenant") or DEFAULT_TENANT) == tenant


@dataclass
class JobQueue:
    """Submit, read, list and cancel training jobs stored in Redis and run by RQ workers."""

    connection: Redis
    queue_name: str = DEFAULT_QUEUE_NAME
    job_timeout_s: int = 24 * 3600
    retention_s: int = 7 * 24 * 3600
    lease_s: float = DEFAULT_LEASE_S
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    store_dir: str | None = None

    # ------------------------------------------------------------------ keys and plumbing
    @property
    def _index_key(self) -> str:
        return f"cpflow:{self.queue_name}:jobs"

    def _key(self, job_id: str) -> str:
        return record_key(self.queue_name, job_id)

    @property
    def rq_queue(self) -> Queue:
        return Queue(self.queue_name, connection=self.connection, serializer=JSONSerializer)

    @contextmanager
    def available(self) -> Iterator[None]:
        """Turn Redis connection errors inside the block into :class:`QueueUnavailable`."""
        try:
            yield
        except _REDIS_ERRORS as exc:
            raise QueueUnavailable(
                f"the job queue (Redis) is unreachable: {exc}; retry when it is back"
            ) from exc

    def ping(self) -> bool:
        """True when Redis answers."""
        try:
            return bool(self.connection.ping())
        except _REDIS_ERRORS:
            return False

    # ------------------------------------------------------------------ submit
    def submit(
        self,
        spec: dict[str, Any],
        *,
        model_name: str,
        dataset_id: str | None,
        timeout_s: int | None = None,
        job_id: str | None = None,
        tenant: str = DEFAULT_TENANT,
        model_tenant: str | None = None,
    ) -> dict[str, Any]:
        """Create the record, enqueue the job function, return the public view (queued).
        ``job_id``: an id reserved beforehand (service.quotas); default a new one. ``tenant``:
        who may see and cancel the job. ``model_tenant``: whose the published model is (None:
        shared)."""
        job_id = job_id or uuid.uuid4().hex
        key = self._key(job_id)
        timeout = int(timeout_s or self.job_timeout_s)
        runtime = {
            "job_id": job_id,
            "record_key": key,
            "heartbeat_s": self.heartbeat_s,
            "lease_s": self.lease_s,
            "retention_s": self.retention_s,
            "timeout_s": timeout,
            "store_dir": self.store_dir,
            "model_tenant": model_tenant,
        }
        full_spec = {**spec, "runtime": runtime}
        now = _now()
        record = {
            "id": job_id,
            "status": JobStatus.QUEUED.value,
            "model_name": model_name,
            "tenant": tenant,
            "dataset_id": dataset_id or "",
            "spec": json.dumps(spec),
            "created_at": repr(now),
            "timeout_s": str(timeout),
            "progress": json.dumps(
                {
                    "iteration": 0,
                    "total": spec.get("training", {}).get("iterations"),
                    "val_nll": None,
                    "seconds_per_iteration": None,
                    "eta_s": None,
                }
            ),
        }
        with self.available():
            pipe = self.connection.pipeline()
            pipe.hset(key, mapping=_fields(record))
            pipe.zadd(self._index_key, {job_id: now})
            pipe.execute()
            try:
                self.rq_queue.enqueue_call(
                    JOB_FUNCTION,
                    kwargs={"spec": full_spec},
                    job_id=job_id,
                    timeout=timeout,
                    result_ttl=self.retention_s,
                    failure_ttl=self.retention_s,
                    description=f"train {model_name}",
                )
            except Exception:
                self.connection.delete(key)
                self.connection.zrem(self._index_key, job_id)
                raise
        return self._public(record)

    # ------------------------------------------------------------------ read
    def get(self, job_id: str, tenant: str | None = None) -> dict[str, Any]:
        """The public view of one job, after lease and RQ reconciliation. With ``tenant``, a
        job of another tenant is not found."""
        with self.available():
            raw = self._fetch(job_id, tenant)
            if raw is None:
                raise JobNotFound(job_id)
            return self._public(self._reconcile(raw))

    def list_jobs(
        self, status: str | None = None, limit: int = 100, tenant: str | None = None
    ) -> list[dict[str, Any]]:
        """Jobs newest first, optionally only those with ``status`` (and of ``tenant``)."""
        out: list[dict[str, Any]] = []
        with self.available():
            ids = _ids(self.connection.zrevrange(self._index_key, 0, -1))
            pipe = self.connection.pipeline()
            for job_id in ids:
                pipe.hgetall(self._key(job_id))
            gone = []
            for job_id, raw in zip(ids, pipe.execute(), strict=True):
                if not raw:
                    gone.append(job_id)  # expired past the retention
                    continue
                if tenant is not None and not _belongs(_decode(raw), tenant):
                    continue
                rec = self._reconcile(_decode(raw))
                if status is None or rec["status"] == status:
                    out.append(self._public(rec))
                    if len(out) >= limit:
                        break
            if gone:
                self.connection.zrem(self._index_key, *gone)
        return out

    def active_jobs_using(self, dataset_id: str, tenant: str | None = None) -> list[str]:
        """Ids of queued or running jobs that train on ``dataset_id`` (of ``tenant``)."""
        with self.available():
            ids = _ids(self.connection.zrevrange(self._index_key, 0, -1))
            users = []
            for job_id in ids:
                raw = self._fetch(job_id, tenant)
                if raw is None or raw.get("dataset_id") != dataset_id:
                    continue
                if self._reconcile(raw)["status"] in ACTIVE:
                    users.append(job_id)
            return users

    def _fetch(self, job_id: str, tenant: str | None = None) -> dict[str, str] | None:
        raw = cast(dict[bytes, bytes], self.connection.hgetall(self._key(job_id)))
        record = _decode(raw) if raw else None
        if record is None or (tenant is not None and not _belongs(record, tenant)):
            return None
        return record

    # ------------------------------------------------------------------ cancel
    def cancel(self, job_id: str, tenant: str | None = None) -> dict[str, Any]:
        """Cancel a queued job now; ask a running one to stop (the worker ends it cancelled).
        With ``tenant``, a job of another tenant is not found."""
        key = self._key(job_id)
        with self.available():
            raw = self._fetch(job_id, tenant)
            if raw is None:
                raise JobNotFound(job_id)
            raw = self._reconcile(raw)
            if raw["status"] not in ACTIVE:
                raise JobNotCancellable(
                    f"job {job_id} already {raw['status']}; only queued or running jobs can be "
                    "cancelled"
                )
            self.connection.hset(key, "cancel_requested", "1")
            if raw["status"] == JobStatus.QUEUED:
                try:
                    rq_job = Job.fetch(
                        job_id, connection=self.connection, serializer=JSONSerializer
                    )
                    rq_job.cancel()
                    self.connection.expire(rq_job.key, self.retention_s)  # RQ keeps it forever
                except (NoSuchJobError, InvalidJobOperation):
                    pass  # already picked up: the job function sees cancel_requested and stops
                self._transition(
                    job_id,
                    {JobStatus.QUEUED},
                    JobStatus.CANCELLED,
                    {"finished_at": repr(_now()), "error": "cancelled before it started"},
                )
            raw = self._fetch(job_id) or raw
            return self._public(self._reconcile(raw))

    # ------------------------------------------------------------------ hand back
    def hand_back(self, job_id: str) -> bool:
        """Put a running job whose worker is shutting down back at the front of the queue.

        Called by the worker after it stopped the job's work horse (RQ has then filed the job
        as failed): the record goes back to queued, RQ's job back to the queue, and the next
        worker starts it from the beginning. False when the record already left "running"
        (the job ended or was cancelled meanwhile): then nothing is requeued.
        """
        with self.available():
            back = self._transition(
                job_id,
                {JobStatus.RUNNING},
                JobStatus.QUEUED,
                {"started_at": "", "heartbeat_at": "", "worker": ""},
            )
            if not back:
                return False
            try:
                rq_job = Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
                rq_job.requeue(at_front=True)
            except (NoSuchJobError, InvalidJobOperation) as exc:
                self._transition(
                    job_id,
                    {JobStatus.QUEUED},
                    JobStatus.FAILED,
                    {"finished_at": repr(_now()), "error": f"could not requeue the job: {exc}"},
                )
                return False
        return True

    # ------------------------------------------------------------------ state changes
    def _transition(
        self,
        job_id: str,
        allowed: set[JobStatus] | frozenset[JobStatus],
        new: JobStatus,
        fields: dict[str, str],
    ) -> bool:
        """Set ``status=new`` (+ fields) only if the current status is in ``allowed``."""
        key = self._key(job_id)
        allowed_values = {s.value for s in allowed}
        done = False

        def apply(pipe: redis.client.Pipeline) -> None:
            nonlocal done
            current = cast(bytes | None, pipe.hget(key, "status"))
            if current is None or current.decode() not in allowed_values:
                done = False
                return
            pipe.multi()
            pipe.hset(key, mapping=_fields({"status": new.value, **fields}))
            if new in TERMINAL:
                pipe.expire(key, self.retention_s)
            done = True

        self.connection.transaction(apply, key)
        return done

    def _reconcile(self, raw: dict[str, str]) -> dict[str, str]:
        """Turn a job whose worker is gone into a failed one (lease expiry, RQ says failed)."""
        status = raw.get("status")
        if status not in (JobStatus.QUEUED, JobStatus.RUNNING):
            return raw
        job_id = raw["id"]
        reason = None
        if status == JobStatus.RUNNING:
            beat = float(raw.get("heartbeat_at") or raw.get("started_at") or raw["created_at"])
            silent = _now() - beat
            if silent > self.lease_s:
                reason = (
                    f"worker lost: no heartbeat for {silent:.0f} s (lease {self.lease_s:g} s); "
                    "the worker was killed or its machine died. Resubmit the job."
                )
        if reason is None:
            reason = self._rq_failure(job_id)
        if reason is None:
            return raw
        self._transition(
            job_id,
            {JobStatus.QUEUED, JobStatus.RUNNING},
            JobStatus.FAILED,
            {"finished_at": repr(_now()), "error": reason},
        )
        return self._fetch(job_id) or raw

    def _rq_failure(self, job_id: str) -> str | None:
        """RQ's reason when it ended the job without our job function recording the end."""
        try:
            job = Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
            rq_status = job.get_status(refresh=False)
        except NoSuchJobError:
            return None
        if rq_status in (RQStatus.FAILED, RQStatus.STOPPED):
            result = job.latest_result()
            detail = (result.exc_string if result is not None else "") or ""
            last = detail.strip().splitlines()[-1] if detail.strip() else "no details"
            return f"the worker ended the job ({rq_status.value}): {last}"
        return None

    # ------------------------------------------------------------------ views
    def _public(self, raw: dict[str, str]) -> dict[str, Any]:
        def loads(field: str) -> Any:
            value = raw.get(field)
            return json.loads(value) if value else None

        spec = loads("spec") or {}
        return {
            "id": raw["id"],
            "status": raw["status"],
            "model_name": raw.get("model_name"),
            "dataset": spec.get("dataset"),
            "data_report": spec.get("data_report"),
            "created_at": _iso(raw.get("created_at")),
            "started_at": _iso(raw.get("started_at")),
            "finished_at": _iso(raw.get("finished_at")),
            "progress": loads("progress"),
            "phase": raw.get("phase") or None,
            "spec": spec,
            "resolved": loads("resolved"),
            "result": loads("result"),
            "error": raw.get("error") or None,
            "cancel_requested": raw.get("cancel_requested") == "1",
        }
