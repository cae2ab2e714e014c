"""The error envelope ``{"error": {"code", "message"}}`` and the handlers that produce it.

Every failure the service returns, from a malformed body to a corrupted model, goes through
:class:`ApiError` or one of the handlers here, so clients parse one shape only. Under /v2 (the
Open Inference Protocol) the same errors take that protocol's shape, ``{"error": "message"}``
(:func:`error_content` picks the shape by path).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.error_codes import ErrorCode, code_for_status
from service.v2_schemas import InferRequest
from service.validation_text import describe_errors

__all__ = [
    "ApiError",
    "ErrorBody",
    "ErrorCode",
    "ErrorResponse",
    "error_content",
    "error_payload",
    "error_responses",
    "install_error_handlers",
    "is_protocol_path",
    "validation_message",
]

log = logging.getLogger("cpflow.service")


class ApiError(Exception):
    """An error with a catalogued machine code (which gives its HTTP status, unless ``status``
    overrides it) and a message saying what to fix."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = code.status if status is None else status
        self.message = message
        self.headers = headers
        self.details = details


class ErrorBody(BaseModel):
    """What went wrong: a stable machine code and a human message."""

    code: str = Field(examples=["validation_error"])
    message: str = Field(examples=["inputs row 3 has 5 values; model 'moons' expects 2"])
    details: list[dict[str, Any]] | None = Field(
        default=None, description="Per-field problems, for validation errors only."
    )


class ErrorResponse(BaseModel):
    """The envelope of every error response."""

    error: ErrorBody


def error_payload(
    code: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The JSON body for an error."""
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return {"error": body}


def is_protocol_path(path: str) -> bool:
    """Whether ``path`` is an Open Inference Protocol route (/v2...)."""
    return path == "/v2" or path.startswith("/v2/")


def error_content(
    path: str, code: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The error body for a request to ``path``: ``{"error": message}`` under /v2 (the
    protocol's shape; the message names what to fix), the envelope everywhere else."""
    if is_protocol_path(path):
        return {"error": message}
    return error_payload(code, message, details)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries documenting the envelope for the given statuses."""
    return {s: {"model": ErrorResponse, "description": code_for_status(s).value} for s in statuses}


def validation_message(
    errors: list[dict[str, Any]], body_model: Any = None
) -> tuple[ErrorCode, str, int]:
    """Turn pydantic errors (in a body of type ``body_model``, when known) into (code,
    message, status) a caller can act on."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        pos = first.get("loc", ("body", "?"))[-1]
        return (
            ErrorCode.MALFORMED_JSON,
            f"request body is not valid JSON ({ctx.get('error', 'decode error')} at char {pos})",
            400,
        )
    return ErrorCode.VALIDATION_ERROR, describe_errors(errors, body_model), 422


def _body_model(request: Request) -> Any:
    """The body type of the route that refused the request, if it has one (/v2 parses its
    inference body itself: an InferRequest)."""
    body = getattr(request.scope.get("route"), "body_field", None)
    if body is not None:
        return body.field_info.annotation
    return InferRequest if is_protocol_path(request.url.path) else None


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception type the app can raise into the envelope."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            error_content(request.url.path, exc.code, exc.message, exc.details),
            status_code=exc.status,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        code, message, status = validation_message(errors, _body_model(request))
        details = [
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": e.get("msg", ""),
                "type": e.get("type", ""),
            }
            for e in errors[:20]
        ]
        return JSONResponse(
            error_content(request.url.path, code, message, details), status_code=status
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = code_for_status(exc.status_code)
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = "no such route; see /docs for the API"
        elif exc.status_code == 405:
            message = "method not allowed on this route; see /docs for the API"
        return JSONResponse(
            error_content(request.url.path, code, message),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    _install_store_handlers(app)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        message = f"internal error ({type(exc).__name__}); see logs"
        return JSONResponse(
            error_content(request.url.path, ErrorCode.INTERNAL_ERROR, message),
            status_code=500,
        )


def _install_store_handlers(app: FastAPI) -> None:
    """Model-store errors: missing things are 404, bad names 422, damaged files 503."""
    from model_store import (
        CorruptDataset,
        CorruptModel,
        DatasetNotFound,
        InvalidDataset,
        InvalidName,
        ModelNameTaken,
        ModelNotFound,
        PlotNotFound,
        StoreError,
    )
    from model_store.object_store import StoreUnavailable

    mapping: list[tuple[type[Exception], ErrorCode]] = [
        (PlotNotFound, ErrorCode.PLOT_NOT_FOUND),  # a subclass: its own handler wins
        (ModelNotFound, ErrorCode.MODEL_NOT_FOUND),
        (ModelNameTaken, ErrorCode.MODEL_NAME_TAKEN),
        (DatasetNotFound, ErrorCode.DATASET_NOT_FOUND),
        (InvalidName, ErrorCode.INVALID_NAME),
        (InvalidDataset, ErrorCode.INVALID_DATASET),
        (CorruptModel, ErrorCode.MODEL_CORRUPT),
        (CorruptDataset, ErrorCode.DATASET_CORRUPT),
        (StoreUnavailable, ErrorCode.STORE_UNAVAILABLE),
        (StoreError, ErrorCode.STORE_ERROR),
    ]
    from service.engine import ModelLoadTimeout

    async def _load_timeout(request: Request, exc: Exception) -> JSONResponse:
        code = ErrorCode.MODEL_LOAD_TIMEOUT
        retry = str(getattr(exc, "retry_after_s", 1))
        return JSONResponse(
            error_content(request.url.path, code, str(exc)),
            status_code=code.status,
            headers={"Retry-After": retry},
        )

    app.add_exception_handler(ModelLoadTimeout, _load_timeout)
    for exc_type, code in mapping:

        async def _handler(
            request: Request, exc: Exception, code: ErrorCode = code
        ) -> JSONResponse:
            return JSONResponse(
                error_content(request.url.path, code, str(exc)), status_code=code.status
            )

        app.add_exception_handler(exc_type, _handler)
