"""Data-set routes: upload (validated before anything is stored), list, inspect, delete.

Data sets live in the model store's datasets area, keyed by the sha256 of their contents, so
the same upload twice is one data set. Listing needs only the store; deleting asks Redis
whether a queued or running job uses the data set (409 if so, 503 if Redis cannot say).

With hashed keys (several tenants) each tenant sees only the data sets it uploaded (their
owners are kept in Redis, service.tenancy); another tenant's data set answers 404 like a
missing one, and deleting drops the caller's claim (the file goes with the last claim).
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from fastapi import APIRouter, Request, Response
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from model_store.data_checks import DataRefused, checked, column_names
from model_store.errors import DatasetNotFound, StoreError
from service.deps import StoreDep
from service.error_codes import ErrorCode, parse_code
from service.errors import ApiError, error_responses
from service.job_schemas import DatasetPublic
from service.queue import QueueUnavailable
from service.routers.jobs import OwnersDep, QueueDep, owned, unavailable
from service.tenancy import tenant_of
from service.uploads import UploadError, parse_upload

__all__ = ["router"]

router = APIRouter(tags=["datasets"])

_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": ".npy (2-D numeric array) or .csv (numbers, "
                            "optionally one header row)",
                        },
                        "name": {
                            "type": "string",
                            "description": "label; default: file name. The data set is then "
                            "addressable by it (the latest upload of that name)",
                        },
                        "drop_columns": {
                            "type": "string",
                            "description": "comma-separated column names to drop before the "
                            "data checks (e.g. those a refusal named)",
                        },
                        "drop_flagged": {
                            "type": "boolean",
                            "description": "drop every column a data-check refusal names "
                            "(constant, index-like, linearly dependent, with missing cells)",
                        },
                    },
                }
            }
        },
    }
}


# OpenAPI links: the id an upload returns is the dataset_id of these routes (and a job's data).
_DATASET_LINKS = {
    "GetDataset": {
        "operationId": "datasets-get_dataset",
        "parameters": {"dataset_id": "$response.body#/id"},
    },
    "DeleteDataset": {
        "operationId": "datasets-delete_dataset",
        "parameters": {"dataset_id": "$response.body#/id"},
    },
    "TrainOnDataset": {
        "operationId": "jobs-submit_job",
        "requestBody": {
            "model_name": "from-upload",
            "dataset": {"id": "$response.body#/id"},
            "training": {"iterations": 10, "batch_size": 16},
            "plots": False,
        },
    },
}


def _public(record: Any) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "names": record.all_names,
        "rows": record.rows,
        "dim": record.dim,
        "columns": record.column_names,
        "sha256": record.sha256,
        "created_at": record.created_at,
        "uploaded_at": record.last_upload,
        "report": record.report,
    }


def _flag(value: object) -> bool:
    return isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on")


def _checked_upload(filename: str, content: bytes, drop: list[str], flagged: bool) -> Any:
    """Parse and check an upload: (values, columns, report); ApiError for a refusal (with
    each finding in ``details``) or an unusable file. Nothing is stored before this passes."""
    try:
        header, array = parse_upload(filename, content)
        return checked(array, column_names(header, array.shape[1]), drop, drop_flagged=flagged)
    except UploadError as exc:
        raise ApiError(ErrorCode.INVALID_DATASET, str(exc)) from None
    except DataRefused as exc:
        findings = exc.report.to_dict()
        raise ApiError(
            parse_code(exc.check), str(exc), details=findings["errors"] + findings["warnings"]
        ) from None
    except ValueError as exc:  # drop_columns names no column, or all of them
        raise ApiError(ErrorCode.UNKNOWN_COLUMNS, f"drop_columns: {exc}") from None


@router.post(
    "/datasets",
    status_code=201,
    response_model=DatasetPublic,
    summary="Upload a data set (.npy or .csv); the same content twice is one data set (200)",
    responses={
        201: {"description": "Stored", "links": _DATASET_LINKS},
        200: {
            "description": "The same content was uploaded before: that data set",
            "model": DatasetPublic,
            "links": _DATASET_LINKS,
        },
        **error_responses(400, 401, 413, 415, 422),
    },
    openapi_extra=_UPLOAD_DOC,
)
async def upload_dataset(
    request: Request, response: Response, store: StoreDep, owners: OwnersDep
) -> Any:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            "send multipart/form-data with a 'file' part (.npy or .csv) and an optional 'name'",
        )
    settings = request.app.state.settings
    try:
        form = await request.form(max_files=1, max_fields=6)
    except Exception as exc:  # noqa: BLE001 - malformed multipart, too many parts
        raise ApiError(
            ErrorCode.BAD_REQUEST, f"could not read the multipart body: {exc}"
        ) from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(
            ErrorCode.VALIDATION_ERROR, "file: missing; send the data as the 'file' part"
        )
    content = await upload.read()
    await form.close()
    if len(content) > settings.max_upload_bytes:
        raise ApiError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"the file has {len(content)} bytes; at most {settings.max_upload_bytes} are accepted",
        )
    filename = upload.filename or ""
    name = form.get("name")
    label = name.strip() if isinstance(name, str) and name.strip() else PurePath(filename).stem
    drops = form.get("drop_columns")
    drop = [c.strip() for c in drops.split(",") if c.strip()] if isinstance(drops, str) else []
    flagged = _flag(form.get("drop_flagged"))
    array, columns, report = await run_in_threadpool(
        _checked_upload, filename, content, drop, flagged
    )
    tenant = tenant_of(request)

    def put() -> tuple[Any, bool]:
        before = {r.id for r in store.datasets.list()}
        record = store.datasets.put(
            array, label or "dataset", columns=columns, report=report.to_dict()
        )
        if owners is None:
            return record, record.id in before
        existed = record.id in before and owned(owners, tenant, record.id)
        owners.add(tenant, record.id)
        return record, existed

    try:
        record, existed = await run_in_threadpool(put)
    except StoreError as exc:
        raise ApiError(ErrorCode.INVALID_DATASET, str(exc)) from None
    except RedisError as exc:
        raise unavailable(
            QueueUnavailable(f"the job queue (Redis) is unreachable: {exc}")
        ) from None
    if existed:
        response.status_code = 200
    response.headers["Location"] = f"/v1/datasets/{record.id}"
    return _public(record)


@router.get(
    "/datasets",
    response_model=list[DatasetPublic],
    summary="Uploaded data sets, oldest first",
    responses=error_responses(401),
)
def list_datasets(request: Request, store: StoreDep, owners: OwnersDep) -> list[dict[str, Any]]:
    tenant = tenant_of(request)
    return [_public(r) for r in store.datasets.list() if owned(owners, tenant, r.id)]


def _record(store: Any, ref: str, owners: Any, tenant: str) -> Any:
    """The data set ``ref`` names (its id, or the latest upload under that name); 404 when
    there is none or it is another tenant's: that looks exactly like a missing one."""
    try:
        return store.datasets.resolve(ref, lambda i: owned(owners, tenant, i))
    except DatasetNotFound:
        raise ApiError(ErrorCode.DATASET_NOT_FOUND, f"data set {ref!r} not found") from None


@router.get(
    "/datasets/{dataset_id}",
    response_model=DatasetPublic,
    summary="One data set, by id or by name (the latest upload under that name)",
    responses=error_responses(401, 404),
)
def get_dataset(
    dataset_id: str, request: Request, store: StoreDep, owners: OwnersDep
) -> dict[str, Any]:
    return _public(_record(store, dataset_id, owners, tenant_of(request)))


@router.delete(
    "/datasets/{dataset_id}",
    status_code=204,
    summary="Delete a data set (409 while a queued or running job uses it)",
    responses=error_responses(401, 404, 409, 503),
)
def delete_dataset(
    dataset_id: str, request: Request, store: StoreDep, queue: QueueDep, owners: OwnersDep
) -> Response:
    tenant = tenant_of(request)
    dataset_id = _record(store, dataset_id, owners, tenant).id
    try:
        users = queue.active_jobs_using(dataset_id, tenant if owners is not None else None)
    except QueueUnavailable as exc:
        raise unavailable(exc) from None
    if users:
        raise ApiError(
            ErrorCode.DATASET_IN_USE,
            f"data set {dataset_id!r} is used by queued or running job(s) "
            f"{', '.join(users)}; cancel them or wait until they end",
        )
    if owners is not None:
        try:
            with queue.available():
                last = owners.release(tenant, dataset_id)
        except QueueUnavailable as exc:
            raise unavailable(exc) from None
        if not last:
            return Response(status_code=204)  # another tenant still holds the same content
    try:
        store.datasets.delete(dataset_id)
    except DatasetNotFound:
        raise ApiError(ErrorCode.DATASET_NOT_FOUND, f"data set {dataset_id!r} not found") from None
    return Response(status_code=204)
