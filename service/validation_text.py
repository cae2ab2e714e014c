"""Pydantic's validation errors as one message a client can act on.

Pydantic reports a union field once per alternative, with the alternative's name in the
location (``inputs.0.0.list[list[float]]: Input should be a valid list``): the message here
keeps the alternative the body came closest to and drops the names, says what shape rows
take with an example, and names the closest allowed field for an unknown one.
"""

from __future__ import annotations

import re
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

from model_store.names import did_you_mean

__all__ = ["ROWS_EXAMPLE", "describe_errors", "fields_at"]

ROWS_EXAMPLE = "[[0.5, 0.1], [1.0, -0.3]]"
# Fields that hold rows of numbers, and what their message says one row is.
_ROW_FIELDS = {
    "inputs": "the model's dim numbers (image models also take [n, C, H, W] nested lists)",
    "context": "the model's context_dim numbers",
}
# A union alternative's name in a location: a class name or a type such as list[list[float]].
_TAG = re.compile(r"^[A-Z]|\[|^(float|int|str|bool|none|list|dict)$")


def _is_tag(part: Any) -> bool:
    return isinstance(part, str) and _TAG.search(part) is not None


def _branch_cost(errors: list[dict[str, Any]]) -> int:
    """How far the body is from an alternative: missing and unknown fields weigh most."""
    return sum(10 if e.get("type") in ("missing", "extra_forbidden") else 1 for e in errors)


def _keep_closest_alternatives(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of each union's alternatives keep the errors of the closest one only."""
    groups: dict[tuple[Any, ...], dict[str, list[dict[str, Any]]]] = {}
    for err in errors:
        loc = tuple(err.get("loc", ()))
        at = next((i for i, part in enumerate(loc) if _is_tag(part)), None)
        if at is not None:
            groups.setdefault(loc[:at], {}).setdefault(loc[at], []).append(err)
    dropped: set[int] = set()
    for branches in groups.values():
        best = min(branches.values(), key=_branch_cost)
        dropped.update(id(e) for errs in branches.values() if errs is not best for e in errs)
    return [e for e in errors if id(e) not in dropped]


def _unwrap(tp: Any) -> list[Any]:
    """The alternatives of ``tp`` with Annotated and None taken away."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, types.UnionType):
        return [a for arg in get_args(tp) if arg is not type(None) for a in _unwrap(arg)]
    return [tp]


def fields_at(model: Any, loc: tuple[Any, ...]) -> list[str] | None:
    """The field names of the object at ``loc`` (union names included) in a body of type
    ``model``, or None where the location is not an object of known fields."""
    current = _unwrap(model)
    for part in loc:
        if _is_tag(part):
            current = [t for t in current if getattr(t, "__name__", None) == part] or current
            continue
        step = []
        for tp in current:
            if isinstance(part, int) and get_origin(tp) in (list, tuple):
                step += _unwrap(get_args(tp)[0])
            elif isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
                step += _unwrap(tp.model_fields[part].annotation)
        current = step
    models = [t for t in current if isinstance(t, type) and issubclass(t, BaseModel)]
    return sorted({name for m in models for name in m.model_fields}) if models else None


def _rows_message(field: str, err: dict[str, Any]) -> str:
    """One message for a malformed rows field (inputs, context) saying what shape it takes."""
    loc = [p for p in err.get("loc", ()) if p != "body" and not _is_tag(p)]
    got = err.get("input")
    row = _ROW_FIELDS[field]
    if len(loc) == 1:
        if err.get("type") == "missing":
            return f"{field} is missing: send a list of rows, e.g. {ROWS_EXAMPLE}"
        if err.get("type") == "too_short":
            return f"{field} is empty; send at least one row, e.g. {ROWS_EXAMPLE}"
        return f"{field} must be a list of rows, each of {row}, e.g. {ROWS_EXAMPLE}"
    if len(loc) == 2 and isinstance(got, int | float) and not isinstance(got, bool):
        return (
            f"{field} must be a list of rows, not one flat row: send a list of rows, "
            "e.g. [[0.5, 0.1]]"
        )
    if len(loc) == 2:
        return f"{field} row {loc[1]} must be a list of {row}, e.g. {ROWS_EXAMPLE}"
    if err.get("type") == "finite_number":
        return f"{field} row {loc[1]}, value {loc[2]}: must be a finite number (no NaN, Infinity)"
    return (
        f"{field} row {loc[1]}, value {loc[2]}: {got!r} is not a number; each row holds {row}, "
        f"e.g. {ROWS_EXAMPLE}"
    )


def _holds_rows(body_model: Any, field: str) -> bool:
    """Whether ``field`` of ``body_model`` holds rows of numbers (lists, or objects keyed by
    column name) rather than objects of known fields (the /v2 tensors, also named inputs)."""
    return body_model is None or fields_at(body_model, (field, 0)) is None


def _one_message(err: dict[str, Any], body_model: Any) -> str:
    raw = tuple(err.get("loc", ()))
    loc = [str(p) for p in raw if p != "body" and not _is_tag(p)]
    if loc and loc[0] in _ROW_FIELDS and raw[:1] == ("body",) and _holds_rows(body_model, loc[0]):
        return _rows_message(loc[0], err)
    where = ".".join(loc) if loc else "body"
    kind = err.get("type")
    if kind == "extra_forbidden":
        allowed = fields_at(body_model, raw[1:-1]) if body_model is not None else None
        if allowed:
            hint = did_you_mean(str(raw[-1]), allowed)
            return f"{where}: unknown field{hint}; allowed here: {', '.join(allowed)}"
        return f"{where}: unknown field; remove it"
    if kind == "finite_number":
        return f"{where}: must be a finite number (no NaN or Infinity)"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
        got = err.get("input")
        hint = did_you_mean(got, choices) if isinstance(got, str) else ""
        return f"{where}: {got!r} is not one of {', '.join(choices)}{hint}"
    message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where}: {message}"


def describe_errors(errors: list[dict[str, Any]], body_model: Any = None) -> str:
    """The message of a 422 for ``errors`` (pydantic's) in a body of type ``body_model``."""
    shown: list[str] = []
    kept = _keep_closest_alternatives(errors)
    for err in kept:
        text = _one_message(err, body_model)
        if text not in shown:
            shown.append(text)
    more = f" (and {len(shown) - 5} more)" if len(shown) > 5 else ""
    return "; ".join(shown[:5]) + more
