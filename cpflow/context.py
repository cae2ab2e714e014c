"""Context rows for conditional flows p(x | c): one validation shared by the library and the
HTTP service, so every layer refuses a bad context with the same machine-readable code."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ContextError", "check_context"]


class ContextError(ValueError):
    """A context that cannot go with the inputs; ``code`` is a stable machine-readable reason
    (``context_required``, ``context_shape``, ``context_rows``, ``context_not_finite``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_context(context: object, rows: int, context_dim: int) -> Tensor:
    """Validate a request's context against ``rows`` inputs: (rows, k) aligned, or one row
    (shape (1, k) or (k,)) broadcast to all; finite numbers. Returns a float64 (rows, k) tensor.

    For callers outside the library (the HTTP service), so every layer gives the same errors.
    """
    if context is None:
        raise ContextError(
            "context_required", f"this model is conditional: send 'context' ({context_dim} values"
            " per row, or one row for all)"
        )  # fmt: skip
    try:
        c = torch.as_tensor(context, dtype=torch.float64)
    except (TypeError, ValueError) as exc:
        raise ContextError(
            "context_shape", f"context must be a list of number rows ({exc})"
        ) from None
    if c.ndim == 1:
        c = c.unsqueeze(0)
    if c.ndim != 2 or c.shape[1] != context_dim:
        raise ContextError(
            "context_shape",
            f"context rows must have {context_dim} values, got shape {tuple(c.shape)}",
        )
    if c.shape[0] not in (1, rows):
        raise ContextError(
            "context_rows",
            f"context has {c.shape[0]} rows for {rows} inputs: send {rows} rows or exactly 1",
        )
    bad = (~torch.isfinite(c)).nonzero()
    if bad.numel():
        r, k = (int(v) for v in bad[0])
        raise ContextError("context_not_finite", f"context[{r}][{k}] is not a finite number")
    return c.expand(rows, context_dim)
