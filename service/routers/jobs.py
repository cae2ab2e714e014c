"""Training-job routes: submit (validated whole), list, inspect, cancel, and follow as SSE.

Handlers are plain ``def`` (run in the thread pool) because Redis calls block. A Redis outage
turns into 503 with the error envelope here only; the scoring routes never touch Redis.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from redis.exceptions import RedisError

from model_store.errors import DatasetNotFound, ModelNameTaken, ModelNotFound, StoreError
from service.deps import SettingsDep, StoreDep
from service.error_codes import ErrorCode
from service.errors import ApiError, error_responses
from service.job_schemas import (
    BUILTIN_DATASETS,
    CONDITIONAL_BUILTIN_DATASETS,
    JobAccepted,
    JobPublic,
    JobSpec,
)
from service.queue import (
    TERMINAL,
    JobNotCancellable,
    JobNotFound,
    JobQueue,
    JobSettings,
    JobStatus,
    QueueUnavailable,
    connect,
)
from service.quotas import admitted, check_job_size, client_of, limits_for
from service.tenancy import DatasetOwners, tenant_of

__all__ = [
    "OwnersDep",
    "QueueDep",
    "get_dataset_owners",
    "get_job_queue",
    "lifespan",
    "owned",
    "router",
    "unavailable",
]

router = APIRouter(tags=["jobs"])
_lock = threading.Lock()


def get_job_queue(request: Request) -> JobQueue:
    """The app's JobQueue, built on first use from the settings (no Redis needed to start)."""
    state = request.app.state
    queue = getattr(state, "job_queue", None)
    if queue is None:
        with _lock:
            queue = getattr(state, "job_queue", None)
            if queue is None:
                settings = state.settings
                knobs = JobSettings()
                queue = JobQueue(
                    connect(settings.redis_url),
                    queue_name=knobs.queue_name,
                    job_timeout_s=settings.job_timeout_s,
                    retention_s=settings.job_retention_s,
                    lease_s=knobs.job_lease_s,
                    heartbeat_s=knobs.job_heartbeat_s,
                    store_dir=str(settings.store_dir),
                )
                state.job_queue = queue
    return queue


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Close the job queue's Redis connections when the app stops."""
    try:
        yield
    finally:
        queue = getattr(app.state, "job_queue", None)
        if queue is not None:
            queue.connection.close()


QueueDep = Annotated[JobQueue, Depends(get_job_queue)]


def get_dataset_owners(request: Request) -> DatasetOwners | None:
    """Who owns which data set, once hashed keys make the service multi-tenant (else None:
    every caller is the default tenant and sees every data set)."""
    if not request.app.state.settings.api_key_hashes:
        return None
    queue = get_job_queue(request)
    return DatasetOwners(queue.connection, queue.queue_name)


OwnersDep = Annotated[DatasetOwners | None, Depends(get_dataset_owners)]


def owned(owners: DatasetOwners | None, tenant: str, dataset_id: str) -> bool:
    """Whether ``tenant`` may use ``dataset_id`` (always, without multi-tenancy)."""
    if owners is None:
        return True
    try:
        return owners.owns(tenant, dataset_id)
    except RedisError as exc:
        raise unavailable(
            QueueUnavailable(f"the job queue (Redis) is unreachable: {exc}")
        ) from None


def unavailable(exc: QueueUnavailable) -> ApiError:
    return ApiError(ErrorCode.QUEUE_UNAVAILABLE, str(exc), headers={"Retry-After": "5"})


def _dataset_dims(
    spec: JobSpec, store: Any, visible: Callable[[str], bool]
) -> tuple[int, int | None, Any]:
    """(data dimension, context dimension or None for an unconditional job, the record when
    uploaded); 422 when the data set does not exist (or is not ``visible`` to the caller) or
    its context columns do not fit it."""
    ref = spec.dataset
    if hasattr(ref, "builtin"):
        if ref.builtin in CONDITIONAL_BUILTIN_DATASETS:
            dim, context_dim = CONDITIONAL_BUILTIN_DATASETS[ref.builtin]
            return dim, context_dim, None
        return BUILTIN_DATASETS[ref.builtin], None, None
    try:
        record = store.datasets.resolve(ref.id, visible)
    except DatasetNotFound:
        raise ApiError(
            ErrorCode.DATASET_NOT_FOUND,
            f"data set {ref.id!r} does not exist; upload it with POST /v1/datasets "
            "and use the id it returns",
            status=422,  # a field of the job spec names it: the spec is what to fix
        ) from None
    except StoreError as exc:
        raise ApiError(ErrorCode.DATASET_UNUSABLE, str(exc)) from None
    if ref.context_columns is None:
        return record.dim, None, record
    _check_context_columns(ref.context_columns, record.dim)
    return record.dim - len(ref.context_columns), len(ref.context_columns), record


def _holdouts(
    spec: JobSpec, record: Any, store: Any, visible: Callable[[str], bool]
) -> dict[str, str]:
    """The ids of the job's own validation / test data sets; 422 when one is missing or has
    other columns than the training data set."""
    ref = spec.dataset
    out = {}
    for field in ("validation", "test"):
        name = getattr(ref, field, None)
        if name is None:
            continue
        if getattr(ref, "context_columns", None) is not None:
            raise ApiError(
                ErrorCode.VALIDATION_ERROR,
                f"dataset.{field}: not for a conditional job (context_columns); drop one",
            )
        try:
            held = store.datasets.resolve(name, visible)
        except DatasetNotFound:
            raise ApiError(
                ErrorCode.DATASET_NOT_FOUND,
                f"dataset.{field}: data set {name!r} does not exist; upload it first",
                status=422,
            ) from None
        if sorted(held.column_names) != sorted(record.column_names):
            raise ApiError(
                ErrorCode.UNKNOWN_COLUMNS,
                f"dataset.{field}: data set {name!r} has columns {held.column_names}, the "
                f"training data set {record.column_names}; give it the same columns",
            )
        out[field] = held.id
    return out


def _check_context_columns(columns: list[int], ncols: int) -> None:
    """The columns named as context must exist, differ, and leave at least one data column."""

    def bad(message: str) -> ApiError:
        return ApiError(ErrorCode.INVALID_CONTEXT_COLUMNS, f"dataset.context_columns: {message}")

    if not columns:
        raise bad("name at least one column, or drop the field for an unconditional model")
    outside = [i for i in columns if not 0 <= i < ncols]
    if outside:
        raise bad(
            f"{outside} out of range: the data set has {ncols} columns, indices 0 to {ncols - 1}"
        )
    if len(set(columns)) != len(columns):
        raise bad("an index appears twice; name each context column once")
    if len(columns) >= ncols:
        raise bad(f"all {ncols} columns are context; leave at least one column as data")


def _check_model(spec: JobSpec, dim: int, context_dim: int | None) -> None:
    if spec.model.dim is not None and spec.model.dim != dim:
        what = "data columns (context excluded)" if context_dim else "columns"
        raise ApiError(
            ErrorCode.DIMENSION_MISMATCH,
            f"model.dim is {spec.model.dim} but the data set has {dim} {what}; "
            "drop model.dim or make it match",
        )
    from cpflow import FlowConfig

    try:
        kwargs: dict[str, Any] = dict(spec.model.flow_kwargs())
        if context_dim is not None:
            kwargs["context_dim"] = context_dim
        FlowConfig(dim=dim, **kwargs)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ApiError(
            ErrorCode.VALIDATION_ERROR, f"model.{'.'.join(map(str, first['loc']))}: {first['msg']}"
        ) from None


def _model_owner(spec: JobSpec, store: Any, settings: Any, tenant: str) -> str | None:
    """Whose the job's model will be: the caller's tenant under CPFLOW_MODEL_SCOPE=tenant, else
    shared (None); 409 model_name_taken when the name's versions are another owner's (the
    worker's publish would be refused)."""
    owner = tenant if settings.model_scope == "tenant" else None
    try:
        current = store.owner(spec.model_name)
    except ModelNotFound:
        return owner  # a new name
    if current != owner:
        raise ModelNameTaken(spec.model_name)
    return owner


# OpenAPI links: the id a submission returns is the job_id of these routes.
_JOB_LINKS = {
    name: {"operationId": f"jobs-{op}", "parameters": {"job_id": "$response.body#/id"}}
    for name, op in (("GetJob", "get_job"), ("CancelJob", "cancel_job"),
                     ("FollowJob", "job_events"))
}  # fmt: skip


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobAccepted,
    summary="Submit a training job (validated now; runs on a cpflow-worker)",
    responses={
        202: {"description": "Queued", "links": _JOB_LINKS},
        **error_responses(401, 403, 409, 422, 429, 503),
    },
)
def submit_job(
    spec: JobSpec,
    request: Request,
    response: Response,
    queue: QueueDep,
    store: StoreDep,
    settings: SettingsDep,
    owners: OwnersDep,
) -> JobAccepted:
    if spec.resources.processes > settings.max_job_processes:
        raise ApiError(
            ErrorCode.TOO_MANY_PROCESSES,
            f"resources.processes is {spec.resources.processes}; at most "
            f"{settings.max_job_processes} per job (CPFLOW_MAX_JOB_PROCESSES)",
        )
    client = client_of(request)
    limits = limits_for(settings, client)
    check_job_size(spec, limits)
    tenant = tenant_of(request)
    dim, context_dim, record = _dataset_dims(
        spec, store, lambda dataset_id: owned(owners, tenant, dataset_id)
    )
    _check_model(spec, dim, context_dim)
    model_tenant = _model_owner(spec, store, settings, tenant)
    body = spec.model_dump(mode="json")
    body["model"]["dim"] = dim
    # Options left out stay out of the record (an unconditional job's record stays as it was)
    optional = ("context_columns", "val_fraction", "test_fraction", "validation", "test")
    body["dataset"] = {
        k: v for k, v in body["dataset"].items() if v is not None or k not in optional
    }
    dataset_id = None if record is None else record.id
    if record is not None:  # ids (names resolve now), and the name the jobs list shows
        body["dataset"] |= _holdouts(spec, record, store, lambda i: owned(owners, tenant, i))
        body["dataset"].update(id=record.id, name=record.name)
        body["data_report"] = record.report
    try:
        with admitted(queue, settings, client, limits) as job_id:
            record = queue.submit(
                body,
                model_name=spec.model_name,
                dataset_id=dataset_id,
                timeout_s=spec.timeout_s,
                job_id=job_id,
                tenant=tenant,
                model_tenant=model_tenant,
            )
    except QueueUnavailable as exc:
        raise unavailable(exc) from None
    response.headers["Location"] = f"/v1/jobs/{record['id']}"
    return JobAccepted(id=record["id"])


@router.get(
    "/jobs",
    response_model=list[JobPublic],
    summary="Training jobs, newest first",
    responses=error_responses(401, 422, 503),
)
def list_jobs(
    request: Request,
    queue: QueueDep,
    status: Annotated[JobStatus | None, Query(description="only jobs with this status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    try:
        return queue.list_jobs(
            status=status.value if status else None, limit=limit, tenant=tenant_of(request)
        )
    except QueueUnavailable as exc:
        raise unavailable(exc) from None


def _get(queue: JobQueue, job_id: str, tenant: str) -> dict[str, Any]:
    try:
        return queue.get(job_id, tenant)
    except JobNotFound:
        raise ApiError(
            ErrorCode.JOB_NOT_FOUND, f"job {job_id!r} not found (unknown, or past its retention)"
        ) from None
    except QueueUnavailable as exc:
        raise unavailable(exc) from None


@router.get(
    "/jobs/{job_id}",
    response_model=JobPublic,
    summary="One training job: status, progress, result, error",
    responses=error_responses(401, 404, 503),
)
def get_job(job_id: str, request: Request, queue: QueueDep) -> dict[str, Any]:
    return _get(queue, job_id, tenant_of(request))


@router.delete(
    "/jobs/{job_id}",
    response_model=JobPublic,
    summary="Cancel a job: a queued one at once, a running one within seconds",
    responses=error_responses(401, 404, 409, 503),
)
def cancel_job(
    job_id: str, request: Request, queue: QueueDep, response: Response
) -> dict[str, Any]:
    try:
        job = queue.cancel(job_id, tenant_of(request))
    except JobNotFound:
        raise ApiError(ErrorCode.JOB_NOT_FOUND, f"job {job_id!r} not found") from None
    except JobNotCancellable as exc:
        raise ApiError(ErrorCode.JOB_FINISHED, str(exc)) from None
    except QueueUnavailable as exc:
        raise unavailable(exc) from None
    if job["status"] not in {s.value for s in TERMINAL}:
        response.status_code = 202  # the worker stops it at its next iteration
    return job


@router.get(
    "/jobs/{job_id}/events",
    summary="Server-sent events: the job's state each time it changes, until it ends",
    responses=error_responses(401, 404, 503),
    response_class=StreamingResponse,
)
async def job_events(
    job_id: str,
    request: Request,
    queue: QueueDep,
    interval_s: Annotated[float, Query(ge=0.1, le=30.0)] = 1.0,
) -> StreamingResponse:
    tenant = tenant_of(request)
    first = await asyncio.to_thread(_get, queue, job_id, tenant)

    async def stream() -> AsyncIterator[bytes]:
        job, last = first, None
        while True:
            text = json.dumps(job)
            if text != last:
                yield f"event: job\ndata: {text}\n\n".encode()
                last = text
            if job["status"] in {s.value for s in TERMINAL}:
                return
            await asyncio.sleep(interval_s)
            try:
                job = await asyncio.to_thread(queue.get, job_id, tenant)
            except (QueueUnavailable, JobNotFound) as exc:
                yield f"event: error\ndata: {json.dumps({'message': str(exc)})}\n\n".encode()
                return

    return StreamingResponse(stream(), media_type="text/event-stream")
