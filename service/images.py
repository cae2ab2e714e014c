"""Image-shaped requests: models with an ``image_shape`` (FlowConfig) take and return
``[n, C, H, W]`` nested lists as well as flat rows of ``C*H*W`` values.

The engine always works on flat rows; this module checks the caller's layout against the
model's shape (422 ``wrong_shape`` naming the expected and the given shapes), flattens images
to rows (outputs go back into the caller's layout in service.json_codec.json_array).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from model_store.manifest import manifest_flow_config
from service.error_codes import ErrorCode
from service.errors import ApiError

__all__ = ["image_shape", "inputs_to_rows"]

_DTYPE_MAX = {torch.float32: "3.4e38", torch.float64: "1.8e308"}


def image_shape(manifest: dict[str, Any]) -> tuple[int, int, int] | None:
    """(C, H, W) of an image model's manifest, or None for a model over plain rows."""
    config = manifest_flow_config(manifest)
    return None if config is None or config.image_shape is None else tuple(config.image_shape)


def _given_shape(inputs: list[Any], i: int) -> list[int]:
    """The shape [n, ...] of the request as seen from item ``i`` (the first that misfits)."""
    shape = [len(inputs)]
    node: Any = inputs[i]
    while isinstance(node, list):
        shape.append(len(node))
        node = node[0] if node else None
    return shape


def _wrong_shape(model: Any, shape: tuple[int, int, int] | None, given: list[int], where: str):
    if shape is None:
        expected = f"rows [n, {model.dim}]"
    else:
        c, h, w = shape
        expected = f"images [n, {c}, {h}, {w}] or rows [n, {c * h * w}]"
    return ApiError(
        ErrorCode.WRONG_SHAPE,
        f"inputs has shape {given}{where}; model {model.name!r} version {model.version} "
        f"expects {expected}",
    )


def _is_image_item(item: list[Any]) -> bool:
    return any(isinstance(v, list) for v in item)


def inputs_to_rows(
    inputs: list[Any], model: Any, rows_to_tensor: Callable[[list[Any], Any], torch.Tensor]
) -> tuple[torch.Tensor, bool]:
    """(x as an (n, d) tensor, whether the caller sent images). Plain rows go through
    ``rows_to_tensor`` (the data plane's row checks); images are checked here."""
    shape = model.image_shape
    image_items = [_is_image_item(item) for item in inputs]
    if not any(image_items):
        if shape is not None:
            d = shape[0] * shape[1] * shape[2]
            for i, row in enumerate(inputs):
                if len(row) != d:
                    raise _wrong_shape(model, shape, [len(inputs), len(row)], f" (row {i})")
        return rows_to_tensor(inputs, model), False
    for i, item in enumerate(inputs):
        if not image_items[i] or not all(isinstance(v, list) for v in item):
            raise _wrong_shape(
                model, shape, _given_shape(inputs, i), f" (inputs[{i}] mixes numbers and lists)"
            )
    if shape is None:
        raise _wrong_shape(model, None, _given_shape(inputs, 0), " (images)")
    c, h, w = shape
    for i, item in enumerate(inputs):
        ok = len(item) == c and all(
            len(ch) == h and all(isinstance(r, list) and len(r) == w for r in ch) for ch in item
        )
        if not ok:
            given = _given_shape(inputs, i)
            raise _wrong_shape(model, shape, given, f" (inputs[{i}])" if i else "")
    x = torch.tensor(inputs, dtype=model.dtype)
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        i, a, b, e = (int(v) for v in (~finite).nonzero()[0])
        limit = _DTYPE_MAX.get(model.dtype, "the dtype's range")
        raise ApiError(
            ErrorCode.VALUE_OUT_OF_RANGE,
            f"inputs[{i}][{a}][{b}][{e}] = {inputs[i][a][b][e]!r} overflows to infinity in "
            f"{str(model.dtype).removeprefix('torch.')} (largest magnitude about {limit}): "
            "rescale the data",
        )
    return x.reshape(x.shape[0], c * h * w), True
