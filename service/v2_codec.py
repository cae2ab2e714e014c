"""Tensors in and out of Open Inference Protocol bodies, with the binary tensor data extension.

A request is JSON, or (binary extension, tritonclient's default) a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw little-endian data of each input
that declares ``parameters.binary_data_size``, in input order. Responses mirror it: outputs asked
for as binary carry ``binary_data_size`` and their bytes follow the JSON header.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from service.error_codes import ErrorCode
from service.errors import ApiError
from service.v2_schemas import InferRequest, RequestInput

__all__ = ["HEADER_LENGTH", "DecodedRequest", "encode_response", "parse_request"]

HEADER_LENGTH = "inference-header-content-length"

_NP_TYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BOOL": np.dtype("?"),
}
_TYPE_NAMES = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(bool): "BOOL"}


@dataclass
class DecodedRequest:
    """The validated JSON part of an inference request and its input tensors by name."""

    request: InferRequest
    tensors: dict[str, np.ndarray]


def _bad(message: str) -> ApiError:
    return ApiError(ErrorCode.BAD_REQUEST, message)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise _bad(f"Inference-Header-Content-Length {header_length!r} is not a number") from None
    if not 0 < n <= len(body):
        raise _bad(
            f"Inference-Header-Content-Length is {n} but the body has {len(body)} bytes; "
            "send the JSON header's length in bytes"
        )
    return body[:n], body[n:]


def _flat_numbers(data: list[Any], name: str) -> list[float]:
    """Row-major values of a (possibly nested) JSON data list; numbers only."""
    out: list[float] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _bad(f"input {name!r}: data holds {value!r}; send numbers only")
            out.append(value)
        else:
            stack.pop()
    return out


def _tensor(spec: RequestInput, binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    """One input as an array of its shape (and the offset past its binary data)."""
    dtype = _NP_TYPES[spec.datatype]
    count = math.prod(spec.shape)
    size = spec.parameters.binary_data_size if spec.parameters else None
    if size is not None:
        if size != count * dtype.itemsize:
            raise _bad(
                f"input {spec.name!r}: binary_data_size is {size} bytes but shape {spec.shape} "
                f"of {spec.datatype} needs {count * dtype.itemsize}"
            )
        if offset + size > len(binary):
            raise _bad(f"input {spec.name!r}: the body ends before its {size} bytes of data")
        array = np.frombuffer(binary[offset : offset + size], dtype=dtype)
        return array.reshape(spec.shape), offset + size
    if spec.data is None:
        raise _bad(f"input {spec.name!r} has no data: send 'data' or binary data")
    values = _flat_numbers(spec.data, spec.name)
    if len(values) != count:
        raise _bad(
            f"input {spec.name!r}: shape {spec.shape} holds {count} values but data has "
            f"{len(values)}"
        )
    return np.asarray(values, dtype=np.float64).astype(dtype).reshape(spec.shape), offset


def parse_request(body: bytes, header_length: str | None) -> DecodedRequest:
    """Validate an inference body (JSON or binary extension) and decode its input tensors."""
    head, binary = _split(body, header_length)
    try:
        request = InferRequest.model_validate_json(head)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors(include_url=False)]
        ) from None
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    view = memoryview(binary)
    for spec in request.inputs:
        if spec.name in tensors:
            raise _bad(f"input {spec.name!r} appears twice; send each tensor once")
        tensors[spec.name], offset = _tensor(spec, view, offset)
    if offset != len(binary):
        raise _bad(
            f"the body has {len(binary) - offset} bytes of binary data that no input declares "
            "(parameters.binary_data_size)"
        )
    return DecodedRequest(request, tensors)


def _json_values(array: np.ndarray) -> list[Any]:
    values = array.reshape(-1).tolist()
    if array.dtype.kind == "f" and not bool(np.isfinite(array).all()):
        return [v if math.isfinite(v) else None for v in values]
    return values


def encode_response(
    head: dict[str, Any], outputs: list[tuple[str, np.ndarray]], binary: set[str]
) -> Response:
    """The response body: ``head`` plus ``outputs``, those named in ``binary`` as raw bytes
    after the JSON header (non-finite values are null in JSON data, NaN/inf in binary)."""
    tensors, chunks = [], []
    for name, array in outputs:
        tensor: dict[str, Any] = {
            "name": name,
            "shape": list(array.shape),
            "datatype": _TYPE_NAMES[array.dtype],
        }
        if name in binary:
            raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = _json_values(array)
        tensors.append(tensor)
    text = json.dumps({**head, "outputs": tensors}, separators=(",", ":")).encode()
    if not chunks:
        return Response(text, media_type="application/json")
    return Response(
        text + b"".join(chunks),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(text))},
    )
