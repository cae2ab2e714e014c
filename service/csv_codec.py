"""Rows in and out of CSV bodies (the /v1 ``log_prob.csv`` routes): the request body as a
header and a float64 array, and scored rows back as CSV lines."""

from __future__ import annotations

import csv
import io

import numpy as np
import torch
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from service.error_codes import ErrorCode
from service.errors import ApiError
from service.uploads import UploadError, read_csv

__all__ = ["csv_header", "csv_lines", "read_csv_body"]

_CSV_TYPES = ("text/csv", "application/csv", "text/plain")


async def read_csv_body(request: Request) -> tuple[list[str] | None, np.ndarray]:
    """The body as (header or None, float64 array); 415 unless sent as CSV, 422 when unusable."""
    main = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if main not in _CSV_TYPES:
        raise ApiError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"send the rows as CSV with 'Content-Type: text/csv' (got {main or 'none'})",
        )
    content = await request.body()
    try:
        header, array = await run_in_threadpool(read_csv, content)
    except UploadError as exc:
        message = str(exc).replace("the .csv file", "the CSV")
        raise ApiError(ErrorCode.INVALID_CSV, message) from None
    if header is not None and len(header) != array.shape[1]:
        raise ApiError(
            ErrorCode.INVALID_CSV,
            f"the header has {len(header)} names but the rows have {array.shape[1]} values",
        )
    return header, array


def csv_lines(inputs: np.ndarray | torch.Tensor, scored: list[torch.Tensor | np.ndarray]) -> bytes:
    """Rows as CSV lines: the inputs as sent, then the scores (Python's shortest round-trip
    spelling, so the file holds exactly the values the JSON route returns; flags as 1.0/0.0)."""
    if isinstance(inputs, torch.Tensor):
        inputs = inputs.cpu().numpy()
    columns = (
        np.asarray(t.double().cpu() if isinstance(t, torch.Tensor) else t, dtype=np.float64)[
            :, None
        ]
        for t in scored
    )
    rows = np.hstack([inputs, *columns]).tolist()
    return "".join(",".join(map(repr, row)) + "\n" for row in rows).encode()


def csv_header(names: list[str]) -> bytes:
    """One CSV line of column names, quoted where needed."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(names)
    return out.getvalue().encode()
