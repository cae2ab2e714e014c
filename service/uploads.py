"""Parse and validate an uploaded data set (.npy or .csv) before anything is stored.

Pure numpy on purpose: the API process must not import the training package, and an upload
must be rejected (with a message saying what to fix) before it reaches the store.
"""

from __future__ import annotations

import csv
import io
import warnings

import numpy as np

__all__ = ["MIN_ROWS", "UploadError", "parse_upload", "read_csv"]

MIN_ROWS = 10
"""Fewest rows an uploaded data set may have: training splits it into train/val/test."""

MAX_DIM = 1024
"""Most columns an uploaded data set may have."""


class UploadError(ValueError):
    """The upload is not a usable data set; the message says what to fix."""


def parse_upload(
    filename: str, content: bytes, *, min_rows: int = MIN_ROWS, max_dim: int = MAX_DIM
) -> tuple[list[str] | None, np.ndarray]:
    """The upload as (its CSV header or None, a float64 array (rows, dim)), or UploadError.

    Empty cells are NaN: missing values are the data checks' to report
    (model_store.data_checks names each column and row), not a parse error."""
    lower = (filename or "").lower()
    header = None
    if lower.endswith(".npy"):
        array = _parse_npy(content)
    elif lower.endswith((".csv", ".txt")):
        header, array = read_csv(content, missing=True)
    else:
        raise UploadError(f"file {filename!r}: send a .npy or .csv file")
    return header, _check(array, min_rows=min_rows, max_dim=max_dim)


def _parse_npy(content: bytes) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(content), allow_pickle=False)
    except ValueError as exc:
        raise UploadError(f"not a plain numeric .npy array ({exc}); save with np.save") from exc
    except Exception as exc:  # truncated or not an .npy file at all
        raise UploadError(f"not a readable .npy file ({exc}); save with np.save") from exc
    if not isinstance(array, np.ndarray):
        raise UploadError("the .npy file must hold one array, not an archive")
    if array.dtype.kind not in "fiu":
        raise UploadError(
            f"array dtype {array.dtype} is not numeric; send float or integer values"
        )
    if array.ndim == 1:
        raise UploadError(
            f"array is 1-D with {array.shape[0]} values; send shape (rows, columns), "
            "e.g. x.reshape(-1, 1) for one column"
        )
    if array.ndim != 2:
        raise UploadError(f"array has shape {array.shape}; send a 2-D (rows, columns) array")
    return array.astype(np.float64, copy=False)


def read_csv(content: bytes, *, missing: bool = False) -> tuple[list[str] | None, np.ndarray]:
    """A CSV of numbers as (its header row, or None, and a float64 array (rows, columns));
    UploadError names the first row that is ragged or not numeric, and its column. With
    ``missing`` an empty cell reads as NaN instead."""
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UploadError("the .csv file is not UTF-8 text") from exc
    fast = _read_plain_numbers(text)
    if fast is not None:
        return fast
    try:
        rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    except csv.Error as exc:
        reason = str(exc)
        if "new-line character" in reason:
            reason = "a line holds a bare carriage return (\\r); end lines with \\n or \\r\\n"
        raise UploadError(f"the .csv file is not readable as CSV: {reason}") from None
    if not rows:
        raise UploadError("the .csv file has no rows")
    # One non-numeric first row is a header; anywhere else text is an error.
    header = None
    if not _numeric_row(rows[0]) and len(rows) > 1:
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    width = len(rows[0])
    values = []
    for i, row in enumerate(rows, start=1):
        if len(row) != width:
            raise UploadError(
                f"ragged rows: data row {i} has {len(row)} columns, the first has {width}; "
                "every row needs the same number of values"
            )
        try:
            values.append([_cell(c, missing) for c in row])
        except ValueError:
            j = next(j for j, c in enumerate(row) if not _is_float(c))
            name = f" ({header[j]!r})" if header and header[j] else ""
            what = (
                "is empty (a missing value)"
                if not row[j].strip()
                else (f"has a non-numeric value {row[j].strip()[:40]!r}")
            )
            raise UploadError(
                f"data row {i}, column {j + 1}{name} {what}; only numbers (and one header "
                "row) are allowed: fill or remove that row"
            ) from None
    return header, np.asarray(values, dtype=np.float64)


def _read_plain_numbers(text: str) -> tuple[list[str] | None, np.ndarray] | None:
    """The common case through numpy's C parser (4x faster than csv + float() on a million rows,
    and a fraction of the memory): numbers only, after blank lines and one optional header.
    None when numpy cannot read the text; the careful parser then says what is wrong."""
    pos, skip = 0, 0
    while True:  # the first non-blank line, without splitting the whole text
        end = text.find("\n", pos)
        line = text[pos:] if end < 0 else text[pos:end]
        if line.replace(",", "").strip():  # a row of empty cells is blank, as in read_csv
            break
        if end < 0:
            return None
        pos, skip = end + 1, skip + 1
    try:
        first = next(csv.reader([line.rstrip("\r")]))
    except csv.Error:
        return None
    header = None if _numeric_row(first) else [c.strip() for c in first]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy only warns about an input without rows
            array = np.loadtxt(
                io.StringIO(text, newline=None),
                delimiter=",",
                skiprows=skip + (header is not None),
                ndmin=2,
                dtype=np.float64,
                comments=None,
            )
    except Exception:  # noqa: BLE001 - anything numpy cannot read goes to the careful parser
        return None
    return (header, array) if array.size else None


def _cell(cell: str, missing: bool) -> float:
    """A cell's number; an empty cell is NaN when ``missing`` allows it."""
    return float("nan") if missing and not cell.strip() else float(cell)


def _is_float(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _numeric_row(row: list[str]) -> bool:
    return all(_is_float(c) for c in row)


def _check(array: np.ndarray, *, min_rows: int, max_dim: int) -> np.ndarray:
    rows, dim = array.shape
    if dim < 1:
        raise UploadError("the data set has no columns")
    if dim > max_dim:
        raise UploadError(f"the data set has {dim} columns; at most {max_dim} are supported")
    if rows < min_rows:
        raise UploadError(
            f"the data set has {rows} row(s); at least {min_rows} are needed to split it "
            "into train, validation and test sets"
        )
    # Data sets are stored (and trained on) as float32: a value beyond its range would be inf.
    # (NaN and inf cells are the data checks' to name: model_store.data_checks.)
    with np.errstate(over="ignore", invalid="ignore"):
        fits = np.isfinite(array.astype(np.float32)) | ~np.isfinite(array)
    if not fits.all():
        r, c = np.argwhere(~fits)[0]
        raise UploadError(
            f"value at row {r + 1}, column {c + 1} ({array[r, c]:g}) overflows float32 "
            f"(|x| > {float(np.finfo(np.float32).max):.3g}); rescale the data"
        )
    return array
