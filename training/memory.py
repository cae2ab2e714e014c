"""How many rows one evaluation chunk may hold, from a memory budget.

Scoring a flow's exact log-det builds, per row, a (d, d) Hessian from ``d`` Hessian-vector
products at once, each a pass through the block's network: the live memory of a chunk is about
``rows * (min(d, 64) * activations * ACTIVATION_COPIES + d * d * HESSIAN_COPIES)`` floats, where
``activations`` is the floats one row's pass through one block's network holds
(:func:`activation_floats`). SLQ holds ``probes`` passes and the Lanczos vectors instead.
Blocks run one after the other without autograd, so one block's pass is what is live.

The copy counts were measured on CPU (bench ``memory``; 8x8 convolutional potentials, hidden 16
and 64: 4.5 activation copies per basis vector) and rounded up.
"""

from __future__ import annotations

import math

from cpflow import FlowConfig

__all__ = ["ACTIVATION_COPIES", "HESSIAN_COPIES", "activation_floats", "eval_chunk_rows"]

ACTIVATION_COPIES = 6  # tensors of one layer's width kept per pass (measured 4.5)
HESSIAN_COPIES = 6  # the Hessian, its symmetrised copy, the columns and the Cholesky factor
_HVP_COLUMNS = 64  # basis vectors pushed at once (cpflow.logdet.hessian_from_hvp's chunk)


def activation_floats(config: FlowConfig) -> int:
    """Floats one row's pass through one block's network holds: hidden units times layers,
    times pixels of the first scale for convolutional potentials (later scales hold fewer)."""
    spec = config.potential
    depth = getattr(spec, "depth", 1)
    width = spec.hidden * depth + getattr(spec, "radial_units", 0)
    width += getattr(spec, "context_hidden", 0)
    if config.image_shape is not None:
        _, height, columns = config.image_shape
        width = spec.hidden * max(depth, 2) * height * columns
    return max(width, config.dim)


def eval_chunk_rows(
    budget_mb: float,
    dim: int,
    method: str,
    *,
    activations: int,
    probes: int = 8,
    steps: int = 20,
    dtype_bytes: int = 4,
) -> int:
    """Rows per evaluation chunk so that one chunk's scoring stays within ``budget_mb``
    (at least 1 row). ``method`` is ``exact`` or ``slq``; ``activations`` as
    :func:`activation_floats` counts them."""
    if method == "exact":
        floats = min(dim, _HVP_COLUMNS) * activations * ACTIVATION_COPIES
        floats += dim * dim * HESSIAN_COPIES
    elif method == "slq":
        floats = probes * (activations * ACTIVATION_COPIES + dim * (steps + 4))
    else:
        raise ValueError(f"unknown method {method!r}; use 'exact' or 'slq'")
    return max(1, math.floor(budget_mb * 2**20 / (floats * dtype_bytes)))
