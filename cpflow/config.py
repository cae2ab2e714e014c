"""FlowConfig: the validated, JSON-serialisable description of a CP-Flow model."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["FlowConfig", "PrecisionMixin"]


class PrecisionMixin:
    """Derived numerics shared by every flow config that has ``dtype`` and ``inverse_tol``."""

    dtype: Literal["float32", "float64"]
    inverse_tol: float | None

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype of parameters and computations."""
        return torch.float64 if self.dtype == "float64" else torch.float32

    @property
    def default_inverse_tol(self) -> float:
        """Inversion tolerance on max|f(x) - y| when the caller gives none."""
        if self.inverse_tol is not None:
            return self.inverse_tol
        return 1e-9 if self.dtype == "float64" else 1e-5


class FlowConfig(PrecisionMixin, BaseModel):
    """Everything needed to rebuild a :class:`cpflow.CPFlow` (architecture and numerics).

    A stored model is this config (as JSON) plus a ``state_dict``; ``CPFlow(cfg)`` followed by
    ``load_state_dict`` rebuilds it exactly.

    Optimal transport: a single block with ``actnorm=False`` and ``standardization="isotropic"``
    is the gradient of one convex potential (see :attr:`is_gradient_map`); per-coordinate
    scalings around the block would break Brenier optimality. :meth:`transport` builds it.
    """

    model_config = ConfigDict(extra="forbid")

    dim: int = Field(ge=1, le=4096, description="data dimension d")
    blocks: int = Field(5, ge=1, le=64, description="number of CP-Flow blocks")
    hidden: int = Field(32, ge=2, le=4096, description="ICNN hidden units per layer")
    depth: int = Field(3, ge=1, le=16, description="ICNN hidden layers")
    icnn: Literal["vanilla", "augmented", "dense"] = "augmented"
    activation: Literal["logistic", "gaussian", "laplace"] = "logistic"
    symmetric_first: bool = Field(True, description="first activation s(u) - u/2")
    zero_offset: bool = Field(False, description="activations s(u) - s(0)")
    actnorm: bool = Field(True, description="ActNorm layer before each CP-Flow block")
    icnn_actnorm: bool = Field(True, description="positive-scale ActNorm inside the ICNN")
    radial_units: int = Field(
        0,
        ge=0,
        le=1024,
        description="radial convex units per block (cpflow.radial): steps of the map along"
        " |x| around the block's input origin, for radially structured data (rings); 0: none",
    )
    init_gain: float | None = Field(
        None,
        gt=0.0,
        le=10.0,
        description="softplus(w1) at initialisation (the ICNN term's weight); None = the"
        " paper's w1 = 0, i.e. log 2; small values start each block near the identity",
    )
    standardization: Literal["diagonal", "isotropic", "whiten"] = Field(
        "diagonal",
        description="per-coordinate std, one scalar std (keeps OT maps convex), or whitening"
        " by the full covariance (identity blocks = the full-covariance Gaussian)",
    )
    cg_atol: float = Field(1e-3, ge=0.0)
    cg_rtol: float = Field(0.0, ge=0.0)
    cg_max_iter: int | None = Field(None, ge=1, description="None: d iterations")
    slq_steps: int = Field(20, ge=1, le=1024)
    slq_probes: int = Field(8, ge=1, le=4096)
    exact_max_dim: int = Field(64, ge=0, description="log_prob 'auto': exact up to this d")
    inverse_solver: Literal["lbfgs", "newton"] = Field(
        "lbfgs", description="batched L-BFGS (paper) or damped Newton (analytic Hessian)"
    )
    inverse_tol: float | None = Field(None, gt=0.0, description="None: 1e-5 f32 / 1e-9 f64")
    inverse_max_iter: int = Field(1000, ge=1)
    lbfgs_history: int = Field(10, ge=1, le=100)
    dtype: Literal["float32", "float64"] = "float32"

    @property
    def is_gradient_map(self) -> bool:
        """True when transform() is the gradient of a single convex potential (an OT map)."""
        return self.blocks == 1 and not self.actnorm and self.standardization == "isotropic"

    @classmethod
    def transport(cls, dim: int, **kwargs: object) -> FlowConfig:
        """A config whose transform is a Brenier map: one block, no ActNorm, scalar std."""
        kwargs = {"blocks": 1, "actnorm": False, "standardization": "isotropic", **kwargs}
        return cls(dim=dim, **kwargs)
