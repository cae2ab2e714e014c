"""The checks every inference request passes, whatever its protocol: limits from the settings,
then the inputs and context against the model (dimension or image shape, finite values in the
model's dtype, a context only for conditional models), each refused with a catalogued code."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from cpflow import ContextError, check_context
from model_store.calibration import Reference
from service.engine import ServedModel
from service.error_codes import ErrorCode, parse_code
from service.errors import ApiError
from service.images import inputs_to_rows
from service.inference.types import Calibration, Inputs, Solver
from service.settings import Settings

__all__ = [
    "check_calibration",
    "check_iterations",
    "check_row_count",
    "check_samples",
    "context_tensor",
    "inputs_tensor",
    "keyed_rows",
    "reference_of",
    "rows_to_tensor",
    "solver_for",
    "table_tensors",
]

_DTYPE_MAX = {torch.float32: "3.4e38", torch.float64: "1.8e308"}


def _dtype_name(model: ServedModel) -> str:
    return str(model.dtype).removeprefix("torch.")


def _first_bad(finite: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(v) for v in (~finite).nonzero()[0])


def check_row_count(rows: int, settings: Settings) -> None:
    """422 too_many_rows above CPFLOW_MAX_BATCH."""
    if rows > settings.max_batch:
        raise ApiError(
            ErrorCode.TOO_MANY_ROWS,
            f"inputs has {rows} rows; at most {settings.max_batch} per request "
            "(CPFLOW_MAX_BATCH): split the batch",
        )


def check_iterations(max_iterations: int | None, settings: Settings) -> None:
    """422 too_many_iterations above CPFLOW_MAX_INVERSE_ITERATIONS."""
    if max_iterations is not None and max_iterations > settings.max_inverse_iterations:
        raise ApiError(
            ErrorCode.TOO_MANY_ITERATIONS,
            f"max_iterations is {max_iterations}; at most {settings.max_inverse_iterations} "
            "(CPFLOW_MAX_INVERSE_ITERATIONS)",
        )


def reference_of(model: ServedModel, asked: str) -> Reference:
    """The version's held-out scores, or 422 calibration_unavailable saying why ``asked``
    (percentiles, drift) cannot be answered."""
    if model.reference is None:
        raise ApiError(
            ErrorCode.CALIBRATION_UNAVAILABLE,
            f"model {model.name!r} version {model.version} was published without held-out "
            f"scores (by an older cpflow, or trained without validation or test rows), so it "
            f"has no {asked}: retrain it to publish a version that has, or leave out "
            "percentile and outlier_level",
        )
    return model.reference


def check_calibration(calibration: Calibration | None, model: ServedModel) -> None:
    """422 when a request asks for percentiles of a version that has no held-out scores."""
    if calibration is not None:
        reference_of(model, "percentiles or outlier flags")


def check_samples(num_samples: int, settings: Settings) -> None:
    """422 too_many_samples above CPFLOW_MAX_SAMPLES."""
    if num_samples > settings.max_samples:
        raise ApiError(
            ErrorCode.TOO_MANY_SAMPLES,
            f"num_samples is {num_samples}; at most {settings.max_samples} per request "
            "(CPFLOW_MAX_SAMPLES)",
        )


def rows_to_tensor(rows: list[list[float]], model: ServedModel) -> torch.Tensor:
    """Check every row has the model's dimension and fits its dtype; return an (n, d) tensor."""
    dim = model.dim
    for i, row in enumerate(rows):
        if len(row) != dim:
            raise ApiError(
                ErrorCode.WRONG_DIMENSION,
                f"inputs row {i} has {len(row)} values; model {model.name!r} version "
                f"{model.version} expects {dim} per row",
            )
    x = torch.tensor(rows, dtype=model.dtype)
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        i, j = _first_bad(finite)
        limit = _DTYPE_MAX.get(model.dtype, "the dtype's range")
        raise ApiError(
            ErrorCode.VALUE_OUT_OF_RANGE,
            f"inputs[{i}][{j}] = {rows[i][j]!r} overflows to infinity in {_dtype_name(model)} "
            f"(largest magnitude about {limit}): rescale the data",
        )
    return x


def _array_tensor(array: np.ndarray, model: ServedModel) -> tuple[torch.Tensor, bool] | None:
    """An array that fits the model as (rows, whether images), or None when it does not fit
    (the caller then checks it as lists, so the error names what is wrong as for JSON)."""
    if len(array) == 0:
        raise ApiError(ErrorCode.VALIDATION_ERROR, "inputs: send at least one row")
    bad = np.argwhere(~np.isfinite(array))
    if len(bad):
        where = "".join(f"[{int(i)}]" for i in bad[0])
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            f"inputs{where}: must be a finite number (no NaN or Infinity)",
        )
    shape = model.image_shape
    if array.ndim == 2 and array.shape[1] == model.dim:
        images = False
    elif array.ndim == 4 and shape is not None and tuple(array.shape[1:]) == shape:
        images = True
    else:
        return None
    x = torch.tensor(array.reshape(len(array), -1), dtype=model.dtype)
    return (x, images) if bool(torch.isfinite(x).all()) else None


def inputs_tensor(inputs: Inputs, model: ServedModel) -> tuple[torch.Tensor, bool]:
    """The request's inputs as (an (n, d) tensor in the model's dtype, whether the caller sent
    images); 422 wrong_dimension, wrong_shape or value_out_of_range when they do not fit.
    Rows sent as objects keyed by column name are put in the model's column order first."""
    if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
        inputs = keyed_rows(inputs, model.columns)
    if not isinstance(inputs, np.ndarray):
        return inputs_to_rows(inputs, model, rows_to_tensor)
    fitted = _array_tensor(inputs, model)
    return fitted if fitted is not None else inputs_to_rows(inputs.tolist(), model, rows_to_tensor)


def keyed_rows(rows: list[dict[str, Any]], columns: list[str]) -> list[list[Any]]:
    """Rows given as {column name: value} as lists in ``columns``' order; 422
    missing_columns / unknown_columns naming the first row that lacks or adds a name."""
    wanted = set(columns)
    out = []
    for i, row in enumerate(rows):
        if row.keys() != wanted:
            missing = [c for c in columns if c not in row]
            unknown = [k for k in row if k not in wanted]
            code = ErrorCode.UNKNOWN_COLUMNS if unknown else ErrorCode.MISSING_COLUMNS
            problem = f"unknown column(s) {unknown}" if unknown else f"lacks column(s) {missing}"
            raise ApiError(
                code,
                f"inputs[{i}] {problem}; the model's columns are {columns} (send each row "
                "as an object with exactly these keys, or as a list in this order)",
            )
        out.append([row[c] for c in columns])
    return out


def context_tensor(context: Any, rows: int, model: ServedModel) -> torch.Tensor | None:
    """The (rows, k) context of a conditional model's request in its dtype, or None for a plain
    model; every problem is a 422 with check_context's code (context_required, context_shape,
    context_rows, context_not_finite), or context_not_accepted for a plain model."""
    if model.context_dim is None:
        if context is not None:
            raise ApiError(
                ErrorCode.CONTEXT_NOT_ACCEPTED,
                f"model {model.name!r} version {model.version} is not conditional: omit 'context'",
            )
        return None
    try:
        c = check_context(context, rows, model.context_dim)
    except ContextError as exc:
        raise ApiError(parse_code(exc.code), str(exc)) from None
    c = c.to(model.dtype)
    finite = torch.isfinite(c)
    if not bool(finite.all()):  # finite in float64, overflows the model's dtype
        i, j = _first_bad(finite)
        limit = _DTYPE_MAX.get(model.dtype, "the dtype's range")
        raise ApiError(
            ErrorCode.CONTEXT_NOT_FINITE,
            f"context[{min(i, len(context) - 1)}][{j}] overflows to infinity in "
            f"{_dtype_name(model)} (largest magnitude about {limit})",
        )
    return c.contiguous()


def solver_for(solver: Solver | None, model: ServedModel) -> Solver | None:
    """The solver to pass the engine: image models invert with their configured solver only
    (another one is a 422 unsupported_solver, the configured one is passed as None)."""
    if model.image_shape is None or solver is None:
        return solver
    configured = getattr(getattr(model.flow, "config", None), "inverse_solver", "lbfgs")
    if solver != configured:
        raise ApiError(
            ErrorCode.UNSUPPORTED_SOLVER,
            f"model {model.name!r} is an image model inverted with {configured!r}; "
            f"solver {solver!r} is not offered for it: omit solver",
        )
    return None


def table_tensors(table: np.ndarray, model: ServedModel) -> tuple[torch.Tensor, Any]:
    """(x, context or None) from a table's columns: the model's dim, then its context columns;
    422 wrong_dimension or value_out_of_range naming the data row and column (1-based)."""
    extra = model.context_dim or 0
    if table.shape[1] != model.dim + extra:
        plus = f" plus {extra} context columns (last)" if extra else ""
        raise ApiError(
            ErrorCode.WRONG_DIMENSION,
            f"the CSV rows have {table.shape[1]} values; model {model.name!r} version "
            f"{model.version} expects {model.dim}{plus}",
        )
    x = torch.from_numpy(table[:, : model.dim]).to(model.dtype)
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        i, j = _first_bad(finite)
        value = float(table[i, j])
        problem = (
            f"overflows to infinity in {_dtype_name(model)}: rescale the data"
            if math.isfinite(value)
            else "is not a number: every value must be finite"
        )
        raise ApiError(
            ErrorCode.VALUE_OUT_OF_RANGE, f"data row {i + 1}, column {j + 1} ({value:g}) {problem}"
        )
    context = context_tensor(table[:, model.dim :], len(table), model) if extra else None
    return x.contiguous(), context
