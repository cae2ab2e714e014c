"""Training-job quotas: active jobs per API key and in total, and the size of one job.

Admission is one Lua script on Redis, so API replicas sharing Redis enforce one limit: it
prunes the caller's and the global sets of active job ids (``cpflow:<queue>:active...``,
scored by admission time) against the job records themselves (a member stays only while its
record is queued or running, or, with no record yet, for a short grace while the API creates
it), counts, and adds the new id only when both counts are under their limits. Nothing is
counted in memory, so a crashed API or worker cannot leak quota: a job whose worker died is
failed by the lease check (``JobQueue.get``) and drops out; a reservation whose API died before
writing the record expires after the grace.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from starlette.requests import Request

from service.auth import key_id
from service.error_codes import ErrorCode
from service.errors import ApiError
from service.job_schemas import JobSpec
from service.queue import JobNotFound, JobQueue, record_key
from service.settings import KeyLimits, Settings

__all__ = ["ANONYMOUS", "Limits", "admitted", "check_job_size", "client_of", "limits_for"]

ANONYMOUS = "anonymous"
"""The caller's name when the server has no API keys (one budget for everyone)."""

RESERVATION_GRACE_S = 60
"""How long an admitted id without a job record still counts (the API is writing it)."""

_ADMIT = """
local function active(set, now, grace, prefix)
  local members = redis.call('ZRANGE', set, 0, -1, 'WITHSCORES')
  for i = 1, #members, 2 do
    local id, since = members[i], tonumber(members[i + 1])
    local status = redis.call('HGET', prefix .. id, 'status')
    if status then
      if status ~= 'queued' and status ~= 'running' then redis.call('ZREM', set, id) end
    elseif now - since > grace then
      redis.call('ZREM', set, id)
    end
  end
  return redis.call('ZCARD', set)
end
local now, grace = tonumber(ARGV[2]), tonumber(ARGV[3])
local per_key, total = tonumber(ARGV[4]), tonumber(ARGV[5])
local mine = active(KEYS[2], now, grace, ARGV[6])
local all = active(KEYS[1], now, grace, ARGV[6])
if per_key > 0 and mine >= per_key then return {'per_key', mine} end
if total > 0 and all >= total then return {'total', all} end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZADD', KEYS[2], now, ARGV[1])
return {'ok', 0}
"""


@dataclass(frozen=True)
class Limits:
    """The quotas that apply to one caller."""

    max_active_jobs: int
    max_job_work: int
    rate_limit: str | None


def client_of(request: Request) -> str:
    """The caller's name: the API key's id set by ApiKeyMiddleware, else :data:`ANONYMOUS`."""
    return getattr(request.state, "client", None) or ANONYMOUS


def limits_for(settings: Settings, client: str) -> Limits:
    """The settings' quotas with the caller's CPFLOW_KEY_LIMITS overrides applied."""
    own = next((v for k, v in settings.key_limits.items() if key_id(k) == client), KeyLimits())
    return Limits(
        max_active_jobs=_either(own.max_active_jobs, settings.max_active_jobs_per_key),
        max_job_work=_either(own.max_job_work, settings.max_job_work),
        rate_limit=_either(own.rate_limit, settings.rate_limit),
    )


def _either(own: object, default: object) -> Any:
    return default if own is None else own


def check_job_size(spec: JobSpec, limits: Limits) -> None:
    """422 job_too_large when iterations x batch x processes passes the caller's cap (a job
    with a time budget instead of iterations is bounded by its time limit instead)."""
    t, processes = spec.training, spec.resources.processes
    if t.iterations is None:
        return
    work = t.iterations * t.batch_size * processes
    if work > limits.max_job_work:
        raise ApiError(
            ErrorCode.JOB_TOO_LARGE,
            f"training.iterations x training.batch_size x resources.processes is "
            f"{t.iterations} x {t.batch_size} x {processes} = {work}; at most "
            f"{limits.max_job_work} per job (CPFLOW_MAX_JOB_WORK): train fewer iterations or "
            "smaller batches",
        )


def _sets(queue: JobQueue, client: str) -> tuple[str, str]:
    base = f"cpflow:{queue.queue_name}:active"
    return base, f"{base}:{client}"


def _admit(queue: JobQueue, client: str, job_id: str, per_key: int, total: int) -> list:
    prefix = record_key(queue.queue_name, "")
    args: list[str | float] = [job_id, time.time(), RESERVATION_GRACE_S, per_key, total, prefix]
    with queue.available():
        result = queue.connection.eval(_ADMIT, 2, *_sets(queue, client), *args)
    return [r.decode() if isinstance(r, bytes) else r for r in result]


def _reconcile(queue: JobQueue, client: str) -> None:
    """Read every counted job through the queue, which fails those whose worker is gone."""
    for key in _sets(queue, client):
        with queue.available():
            # service.queue.connect never decodes responses: the members are bytes.
            members = cast(list[bytes], queue.connection.zrange(key, 0, -1))
        ids = [member.decode() for member in members]
        for job_id in ids:
            try:
                queue.get(job_id)
            except JobNotFound:
                pass


def _refusal(which: str, active: int, limit: int, settings: Settings) -> ApiError:
    if which == "per_key":
        what = f"at most {limit} queued or running training jobs per API key"
        setting = "CPFLOW_MAX_ACTIVE_JOBS_PER_KEY or this key's CPFLOW_KEY_LIMITS"
    else:
        what = f"at most {limit} queued or running training jobs in total"
        setting = "CPFLOW_MAX_ACTIVE_JOBS"
    return ApiError(
        ErrorCode.JOB_QUOTA_EXCEEDED,
        f"job quota reached: {what} ({setting}); {active} are active. Retry when one has "
        "finished, or cancel one (DELETE /v1/jobs/{id})",
        headers={"Retry-After": str(settings.quota_retry_after_s)},
        details=[{"limit": which, "max": limit, "active": active}],
    )


@contextmanager
def admitted(queue: JobQueue, settings: Settings, client: str, limits: Limits) -> Iterator[str]:
    """Reserve a place for a new job of ``client`` and yield its id; 429 when a quota is full.
    The place is given back if the block fails (the job was not created)."""
    job_id = uuid.uuid4().hex
    per_key, total = limits.max_active_jobs, settings.max_active_jobs
    which, active = _admit(queue, client, job_id, per_key, total)
    if which != "ok":
        _reconcile(queue, client)  # a dead worker's job may still read running: fail it first
        which, active = _admit(queue, client, job_id, per_key, total)
    if which != "ok":
        raise _refusal(which, int(active), per_key if which == "per_key" else total, settings)
    try:
        yield job_id
    except BaseException:
        with queue.available():
            for key in _sets(queue, client):
                queue.connection.zrem(key, job_id)
        raise
