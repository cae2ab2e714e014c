"""The catalogue of machine codes the service answers in ``{"error": {"code", "message"}}``.

Every error the service sends names one :class:`ErrorCode`; each code carries its HTTP status
and a one-line meaning, and the error table of docs/http-api.md is checked against this list
(tests/service/test_error_codes.py), so a code is added here, once, or not at all.
``python -m service.error_codes`` prints that table.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self

__all__ = ["ErrorCode", "code_for_status", "markdown_table", "parse_code"]


class ErrorCode(StrEnum):
    """A stable machine-readable error code, with its HTTP status and what it means."""

    status: int
    meaning: str

    def __new__(cls, value: str, status: int, meaning: str) -> Self:
        member = str.__new__(cls, value)
        member._value_ = value
        member.status = status
        member.meaning = meaning
        return member

    # -- the request as sent
    BAD_REQUEST = "bad_request", 400, "the request cannot be read (headers, multipart, tensors)"
    MALFORMED_JSON = "malformed_json", 400, "the body is not valid JSON"
    VALIDATION_ERROR = "validation_error", 422, "a field is missing, of the wrong type or range"
    UNSUPPORTED_MEDIA_TYPE = (
        "unsupported_media_type",
        415,
        "the body's Content-Type is not accepted",
    )
    PAYLOAD_TOO_LARGE = "payload_too_large", 413, "the body or file is over its byte limit"
    # -- auth and limits of the server
    UNAUTHORIZED = "unauthorized", 401, "no API key, or not a valid one"
    FORBIDDEN = "forbidden", 403, "the key may not do this"
    RATE_LIMITED = "rate_limited", 429, "too many requests for this key; retry after Retry-After"
    TOO_MANY_REQUESTS = "too_many_requests", 429, "too many requests; retry later"
    # -- routes
    NOT_FOUND = "not_found", 404, "no such route or resource"
    METHOD_NOT_ALLOWED = "method_not_allowed", 405, "the route does not take this method"
    NOT_ACCEPTABLE = "not_acceptable", 406, "no answer in the media type asked for"
    CONFLICT = "conflict", 409, "the resource is in a state that does not allow this"
    # -- inference inputs
    WRONG_DIMENSION = "wrong_dimension", 422, "a row has not the model's number of values"
    WRONG_SHAPE = "wrong_shape", 422, "rows or images in a layout the model does not take"
    VALUE_OUT_OF_RANGE = "value_out_of_range", 422, "a value overflows the model's float type"
    TOO_MANY_ROWS = "too_many_rows", 422, "more rows than CPFLOW_MAX_BATCH (CSV: MAX_CSV_ROWS)"
    TOO_MANY_SAMPLES = "too_many_samples", 422, "num_samples is over CPFLOW_MAX_SAMPLES"
    TOO_MANY_ITERATIONS = "too_many_iterations", 422, "max_iterations is over its limit"
    UNSUPPORTED_SOLVER = "unsupported_solver", 422, "the model does not invert with this solver"
    INVALID_CSV = "invalid_csv", 422, "the CSV body cannot be read as numeric rows"
    CONTEXT_NOT_ACCEPTED = "context_not_accepted", 422, "a context sent to a plain model"
    CONTEXT_REQUIRED = "context_required", 422, "a conditional model was sent no context"
    CONTEXT_SHAPE = "context_shape", 422, "context rows of the wrong width or nesting"
    CONTEXT_ROWS = "context_rows", 422, "context rows neither one nor one per input"
    CONTEXT_NOT_FINITE = "context_not_finite", 422, "a context value is NaN or infinite"
    CALIBRATION_UNAVAILABLE = (
        "calibration_unavailable",
        422,
        "percentiles, outliers or drift asked of a version published without held-out scores",
    )
    # -- the model store
    MODEL_NOT_FOUND = "model_not_found", 404, "no such model, or no such version of it"
    MODEL_NAME_TAKEN = (
        "model_name_taken",
        409,
        "another tenant's or the shared models use the name",
    )
    PLOT_NOT_FOUND = "plot_not_found", 404, "the model version has no plot of this name"
    INVALID_NAME = "invalid_name", 422, "a model or data set name breaks the naming rules"
    MODEL_CORRUPT = "model_corrupt", 503, "a stored version is damaged and cannot be served"
    STORE_UNAVAILABLE = "store_unavailable", 503, "the model store cannot be reached"
    MODEL_LOAD_TIMEOUT = (
        "model_load_timeout",
        503,
        "loading the model passed CPFLOW_LOAD_TIMEOUT_S (a stalled store); retry after Retry-After",
    )
    STORE_ERROR = "store_error", 503, "the model store failed to answer"
    # -- data sets
    DATASET_NOT_FOUND = "dataset_not_found", 404, "no such data set (422 when a job names it)"
    INVALID_DATASET = "invalid_dataset", 422, "the uploaded file is not a usable data set"
    DATASET_CORRUPT = "dataset_corrupt", 503, "a stored data set is damaged"
    DATASET_IN_USE = "dataset_in_use", 409, "queued or running jobs still use the data set"
    # -- data checks (model_store.data_checks): refused tables; the message names the columns
    MISSING_VALUES = (
        "missing_values",
        422,
        "cells are empty, NaN or infinite (column and row named)",
    )
    CONSTANT_COLUMN = "constant_column", 422, "a column holds one value: drop it"
    INDEX_COLUMN = "index_column", 422, "a column is a running count (a saved row index): drop it"
    LINEAR_DEPENDENCY = (
        "linear_dependency",
        422,
        "a column is an exact or near-exact linear combination of others: drop it",
    )
    UNKNOWN_COLUMNS = "unknown_columns", 422, "column names that the data set or model lacks"
    MISSING_COLUMNS = "missing_columns", 422, "rows keyed by name lack some of the model's columns"
    # -- training jobs
    DATASET_UNUSABLE = "dataset_unusable", 422, "the job's data set cannot be trained on"
    DIMENSION_MISMATCH = "dimension_mismatch", 422, "model.dim differs from the data's columns"
    INVALID_CONTEXT_COLUMNS = "invalid_context_columns", 422, "dataset.context_columns is unusable"
    TOO_MANY_PROCESSES = "too_many_processes", 422, "resources.processes is over its limit"
    JOB_TOO_LARGE = "job_too_large", 422, "iterations x batch x processes over CPFLOW_MAX_JOB_WORK"
    JOB_QUOTA_EXCEEDED = "job_quota_exceeded", 429, "too many active jobs; retry after Retry-After"
    JOB_NOT_FOUND = "job_not_found", 404, "no such job (unknown, or past its retention)"
    JOB_FINISHED = "job_finished", 409, "the job has ended and cannot be cancelled"
    QUEUE_UNAVAILABLE = "queue_unavailable", 503, "Redis cannot be reached; retry later"
    # -- the server itself
    UNAVAILABLE = "unavailable", 503, "the service cannot answer now"
    INTERNAL_ERROR = "internal_error", 500, "a bug: the logs name the exception"


_BY_STATUS = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    406: ErrorCode.NOT_ACCEPTABLE,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    422: ErrorCode.VALIDATION_ERROR,
    429: ErrorCode.TOO_MANY_REQUESTS,
    500: ErrorCode.INTERNAL_ERROR,
    503: ErrorCode.UNAVAILABLE,
}


def code_for_status(status: int) -> ErrorCode:
    """The generic code of an HTTP status (for errors raised by the framework, not by us)."""
    return _BY_STATUS.get(
        status, ErrorCode.INTERNAL_ERROR if status >= 500 else ErrorCode.BAD_REQUEST
    )


_BY_VALUE = {code.value: code for code in ErrorCode}


def parse_code(value: str) -> ErrorCode:
    """The catalogued code spelled ``value`` (a KeyError names a code missing from it)."""
    return _BY_VALUE[value]


def markdown_table() -> str:
    """The error table of docs/http-api.md: one row per code, in catalogue order."""
    rows = ["| code | status | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{c.value}` | {c.status} | {c.meaning} |" for c in ErrorCode]
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
