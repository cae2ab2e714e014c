"""User arrays from .npy or .csv files, checked so that a flow can be trained on them.

Every problem becomes a ``DatasetError`` whose message names the place (line, column) and says
what to change. ``validate_array`` is the one check that both the trainer and the service's
upload route apply, so an upload that passes it can be trained on.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from .errors import DatasetError

__all__ = [
    "MIN_ROWS",
    "SUPPORTED_SUFFIXES",
    "load_array_file",
    "load_table",
    "parse_array_bytes",
    "validate_array",
]

MIN_ROWS = 10  # a train / val / test split needs a few rows in each part
SUPPORTED_SUFFIXES = (".npy", ".csv", ".tsv", ".txt")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def validate_array(
    arr: object,
    *,
    min_rows: int = MIN_ROWS,
    source: str = "data",
    column_names: list[str] | None = None,
    allow_missing: bool = False,
) -> np.ndarray:
    """Check that ``arr`` is a finite numeric 2-D array (rows x features); return it as float64.

    Raises DatasetError naming the first offending row and column (0-based array indices are
    reported 1-based, as a spreadsheet would). ``source`` prefixes the message (e.g. a file name).
    ``allow_missing`` lets NaN and inf through (the data checks name them).
    """
    if not isinstance(arr, np.ndarray):
        try:
            arr = np.asarray(arr)
        except (ValueError, TypeError) as exc:  # e.g. ragged nested lists
            raise DatasetError(f"{source}: not a rectangular numeric array ({exc})") from exc
    kind = arr.dtype.kind
    if arr.dtype.names is not None:
        raise DatasetError(
            f"{source}: structured array with fields {list(arr.dtype.names)}; "
            "save a plain 2-D float array instead (e.g. np.column_stack of the fields)"
        )
    if kind not in "iuf":
        what = {
            "b": "booleans",
            "c": "complex numbers",
            "O": "Python objects",
            "U": "text",
            "S": "bytes",
            "M": "dates",
            "m": "time deltas",
        }.get(kind, f"dtype {arr.dtype}")
        raise DatasetError(
            f"{source}: the array holds {what} (dtype {arr.dtype}); only integer or "
            "floating-point numbers are accepted; convert it with arr.astype(float)"
        )
    if arr.ndim != 2:
        if arr.ndim == 0:
            hint = "got a single number"
        elif arr.ndim == 1:
            hint = (
                f"got a 1-D array of shape {arr.shape}; reshape to ({arr.shape[0]}, 1) for one "
                "feature per row"
            )
        else:
            hint = (
                f"got shape {arr.shape}; flatten each sample to one row, e.g. "
                "arr.reshape(len(arr), -1)"
            )
        raise DatasetError(f"{source}: expected a 2-D array (rows x features); {hint}")
    rows, cols = arr.shape
    if cols == 0:
        raise DatasetError(f"{source}: the array has {rows} rows but no columns")
    if rows < min_rows:
        raise DatasetError(
            f"{source}: {rows} row{'s' if rows != 1 else ''}; at least {min_rows} are needed "
            "to train and evaluate a model"
        )
    out = np.ascontiguousarray(arr, dtype=np.float64)
    bad = ~np.isfinite(out)
    if bad.any() and not allow_missing:
        r, c = (int(i) for i in np.argwhere(bad)[0])
        raise DatasetError(
            f"{source}: {int(bad.sum())} missing or infinite value(s); the first is "
            f"{_describe(out[r, c])} at row {r + 1}, {_col(c, column_names)}; remove or impute "
            "those rows before uploading"
        )
    big = np.isfinite(out) & (np.abs(out) > _FLOAT32_MAX)
    if big.any():
        r, c = (int(i) for i in np.argwhere(big)[0])
        raise DatasetError(
            f"{source}: value {out[r, c]:.3g} at row {r + 1}, {_col(c, column_names)} does not "
            "fit in float32 (the models' precision); rescale that column"
        )
    return out


def _describe(value: float) -> str:
    return "NaN" if np.isnan(value) else ("+inf" if value > 0 else "-inf")


def _col(index: int, names: list[str] | None) -> str:
    if names and index < len(names) and names[index]:
        return f"column {index + 1} ({names[index]!r})"
    return f"column {index + 1}"


def load_array_file(path: str | Path, *, min_rows: int = MIN_ROWS) -> np.ndarray:
    """Read a .npy or .csv/.tsv/.txt file of numbers (header row optional) into a float64 array."""
    data, fmt, name = _read_file(path)
    return parse_array_bytes(data, fmt, min_rows=min_rows, source=name)


def load_table(
    path: str | Path, *, min_rows: int = MIN_ROWS
) -> tuple[np.ndarray, list[str] | None]:
    """A data file as (float64 array, the CSV header's names or None). Empty cells read as
    NaN and NaN / inf are kept: the data checks (model_store.data_checks) name them."""
    data, fmt, name = _read_file(path)
    if not data or not data.strip():
        raise DatasetError(f"{name}: the file is empty")
    if fmt == "npy":
        values, names = _read_npy(data, name), None
    else:
        values, names = _read_csv(data, name, missing=True)
    arr = validate_array(
        values, min_rows=min_rows, source=name, column_names=names, allow_missing=True
    )
    return arr, names


def _read_file(path: str | Path) -> tuple[bytes, str, str]:
    """A data file's bytes, format (npy or csv) and name; DatasetError when unreadable."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DatasetError(
            f"{p.name}: unsupported file type {suffix or '(none)'!r}; use one of "
            f"{', '.join(SUPPORTED_SUFFIXES)}"
        )
    try:
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise DatasetError(f"{p}: file not found") from exc
    except IsADirectoryError as exc:
        raise DatasetError(f"{p}: is a directory, not a data file") from exc
    except OSError as exc:
        raise DatasetError(f"{p}: cannot be read ({exc.strerror or exc})") from exc
    return data, "npy" if suffix == ".npy" else "csv", p.name


def parse_array_bytes(
    data: bytes, fmt: str, *, min_rows: int = MIN_ROWS, source: str = "upload"
) -> np.ndarray:
    """Parse the bytes of a .npy (``fmt="npy"``) or CSV (``fmt="csv"``) file; see load_array_file."""
    if fmt not in ("npy", "csv"):
        raise DatasetError(f"{source}: unknown format {fmt!r}; use 'npy' or 'csv'")
    if not data or not data.strip():
        raise DatasetError(f"{source}: the file is empty")
    if fmt == "npy":
        return validate_array(_read_npy(data, source), min_rows=min_rows, source=source)
    values, names = _read_csv(data, source)
    return validate_array(values, min_rows=min_rows, source=source, column_names=names)


def _read_npy(data: bytes, source: str) -> np.ndarray:
    if not data.startswith(b"\x93NUMPY"):
        raise DatasetError(
            f"{source}: not a .npy file (no NumPy header); save the array with numpy.save"
        )
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DatasetError(
                f"{source}: the .npy file holds Python objects (it needs pickle, which is not "
                "accepted); save a numeric array, e.g. np.save(path, arr.astype(float))"
            ) from exc
        raise DatasetError(f"{source}: unreadable .npy file ({exc})") from exc
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{source}: truncated or corrupt .npy file ({exc})") from exc


def _sniff_delimiter(line: str) -> str | None:
    for delim in (",", ";", "\t"):
        if delim in line:
            return delim
    return None  # whitespace-separated (or a single column)


def _split_cells(lines: list[str], delim: str | None) -> list[list[str]]:
    if delim is None:
        return [ln.split() for ln in lines]
    return list(csv.reader(lines, delimiter=delim, skipinitialspace=True))


def _read_csv(
    data: bytes, source: str, *, missing: bool = False
) -> tuple[np.ndarray, list[str] | None]:
    """Parse delimited text of numbers; the first line is a header when none of its cells is a number.
    With ``missing`` an empty cell reads as NaN instead of raising.

    A fast C parser (numpy.loadtxt) reads well-formed files; anything it rejects is parsed again
    cell by cell, to name the first bad line and column.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{source}: not UTF-8 text (byte {exc.start}); save the CSV as UTF-8"
        ) from exc
    numbered = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip()]
    if not numbered:
        raise DatasetError(f"{source}: the file is empty")
    delim = _sniff_delimiter(numbered[0][1])

    names: list[str] | None = None
    head = _split_cells([ln for _, ln in numbered[:2]], delim)
    first_no, first = numbered[0][0], head[0]
    numeric = [_is_number(c) for c in first]
    if first and not any(numeric):
        names = [c.strip() for c in first]
        numbered = numbered[1:]
        if not numbered:
            raise DatasetError(f"{source}: only a header line ({first_no}), no data rows")
    elif not all(numeric) and len(head) > 1 and all(_is_number(c) for c in head[1]):
        j = numeric.index(True)
        raise DatasetError(
            f"{source}: line {first_no} looks like a header, but its column {j + 1} "
            f"({first[j].strip()!r}) is a number; give every column a non-numeric name or "
            "remove the header line"
        )
    width = len(names) if names is not None else len(first)
    body = [ln for _, ln in numbered]

    if '"' not in text:
        try:
            values = np.loadtxt(body, delimiter=delim, comments=None, dtype=np.float64, ndmin=2)
        except ValueError:
            values = None
        if values is not None and values.shape == (len(body), width):
            return values, names

    rows = list(zip((no for no, _ in numbered), _split_cells(body, delim), strict=True))
    for no, cells in rows:
        if len(cells) != width:
            ref = "the header" if names is not None else f"line {first_no}"
            raise DatasetError(
                f"{source}: line {no} has {len(cells)} column(s) but {ref} has {width}; "
                "every row needs the same number of values"
            )
    for no, cells in rows:  # find the first bad cell, to name it
        for j, cell in enumerate(cells):
            if _is_number(cell) or (missing and not cell.strip()):
                continue
            where = f"line {no}, {_col(j, names)}"
            if not cell.strip():
                raise DatasetError(
                    f"{source}: {where} is empty (missing value); fill or remove that row"
                )
            raise DatasetError(
                f"{source}: {where} holds {cell.strip()[:40]!r}, which is not a number; only "
                "numeric columns are supported (drop text columns such as labels or IDs)"
            )
    values = np.array(
        [[float(c) if c.strip() else np.nan for c in cells] for _, cells in rows],
        dtype=np.float64,
    )
    return values, names


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True
