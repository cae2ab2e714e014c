"""JSON bodies of the /v1 inference routes, parsed and written with orjson and numpy.

A request body is parsed with orjson (the standard library's parser where orjson refuses it:
NaN and Infinity literals, integers beyond 64 bits, other encodings; so what is accepted and
every error stay as they were). When its ``inputs`` are equal-length rows (or [n, C, H, W]
images) of finite numbers, they become one float64 array straight away, and the schemas accept
that array without checking each number again (:func:`numeric_inputs`); anything else stays as
the lists JSON gave and is validated number by number, with the same 422s as ever.

An answer is written by :func:`json_response`: numpy arrays straight to JSON text, non-finite
values as null, without validating the response model again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import orjson
import torch
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidatorFunctionWrapHandler
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["NumericJsonRoute", "json_array", "json_response", "numeric_inputs", "parse_body"]

# JSON booleans are the only values numpy would silently turn into numbers (true -> 1.0);
# numbers never contain these bytes, so a body without them has no booleans anywhere.
_BOOLEANS = (b"true", b"false")


def _numeric_array(rows: list[Any]) -> np.ndarray | None:
    """``rows`` as a float64 array when they are equal-length rows, or images, of finite JSON
    numbers; None otherwise (strings, nulls, ragged rows, other depths, huge integers)."""
    try:
        array = np.array(rows)
    except (ValueError, OverflowError):  # ragged nesting; integers beyond 64 bits
        return None
    if array.dtype.kind not in "if" or array.ndim not in (2, 4) or array.size == 0:
        return None
    array = array.astype(np.float64, copy=False)
    return array if bool(np.isfinite(array).all()) else None


def parse_body(body: bytes) -> Any:
    """A request body as JSON, with numeric ``inputs`` as a float64 array when they are one."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        value = json.loads(body)  # its extensions (NaN), and its errors, as before
    if not isinstance(value, dict) or any(b in body for b in _BOOLEANS):
        return value
    rows = value.get("inputs")
    if isinstance(rows, list) and rows:
        array = _numeric_array(rows)
        if array is not None:
            value["inputs"] = array
    return value


def numeric_inputs(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Pydantic wrap validator of ``inputs``: an array made by :func:`parse_body` is taken as it
    is (its numbers were checked at once); anything else gets the field's full validation."""
    if (
        isinstance(value, np.ndarray)
        and value.dtype == np.float64
        and value.ndim in (2, 4)
        and value.size > 0
        and bool(np.isfinite(value).all())
    ):
        return value
    return handler(value)


class _NumericJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_body(await self.body())
        return self._json


class NumericJsonRoute(APIRoute):
    """A FastAPI route whose JSON body is parsed by :func:`parse_body`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(_NumericJsonRequest(request.scope, request.receive))

        return route


def json_array(t: torch.Tensor, image_shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """A result tensor as a float64 array for :func:`json_response`: (n, d) rows, or [n, C, H, W]
    images when ``image_shape`` is given. float64, so that each value is written as the same
    decimal as Python's float would write it."""
    array = np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float64)
    return array if image_shape is None else array.reshape(len(array), *image_shape)


def json_response(schema: type[BaseModel], /, **fields: Any) -> Response:
    """A 200 JSON answer with the fields of ``schema`` (defaults where not given), numpy arrays
    written directly and non-finite numbers as null (as the schema's serialiser writes them)."""
    unknown = set(fields) - set(schema.model_fields)
    if unknown:
        raise TypeError(f"{schema.__name__} has no field(s) {sorted(unknown)}")
    content = {
        name: fields[name] if name in fields else info.get_default(call_default_factory=True)
        for name, info in schema.model_fields.items()
    }
    body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, media_type="application/json")
