"""FlowConfig: the validated, JSON-serialisable description of any CP-Flow model.

One flow type covers tabular data, images and conditional densities p(x | c): what differs is
the convex potential of the blocks, a discriminated union on ``potential.kind``:

* ``icnn``: a dense input-convex network (vanilla / augmented / dense wiring), optionally with
  radial convex units (:mod:`cpflow.radial`);
* ``conv``: a convolutional ICNN over images of ``image_shape`` (paper §5.3);
* ``picnn``: a partially input-convex network taking a context c (p(x | c), App. E.6);
* ``coupling``: affine coupling blocks instead of convex potentials (the ablation of Table 2).

The flat, older form (``FlowConfig(dim=2, hidden=32, depth=3)``, and the manifests written
before this union existed, with ``kind: "conditional" | "multiscale"``) is still accepted: the
potential's fields are gathered into ``potential`` on validation.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "EXACT_MAX_DIM",
    "ConvPotential",
    "CouplingBlocks",
    "FlowConfig",
    "ICNNPotential",
    "PICNNPotential",
    "Potential",
]

EXACT_MAX_DIM = 64
"""Largest dimension at which method "auto" takes the exact Hessian log-det (SLQ above it): the
default of FlowConfig, of the training config and of the service's CPFLOW_EXACT_MAX_DIM."""

Activation = Literal["logistic", "gaussian", "laplace"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ICNNPotential(_Spec):
    """A dense ICNN G(x), optionally plus radial units R(x)."""

    kind: Literal["icnn"] = "icnn"
    hidden: int = Field(32, ge=2, le=4096, description="ICNN hidden units per layer")
    depth: int = Field(3, ge=1, le=16, description="ICNN hidden layers")
    icnn: Literal["vanilla", "augmented", "dense"] = "augmented"
    activation: Activation = "logistic"
    symmetric_first: bool = Field(True, description="first activation s(u) - u/2")
    zero_offset: bool = Field(False, description="activations s(u) - s(0)")
    icnn_actnorm: bool = Field(True, description="positive-scale ActNorm inside the ICNN")
    radial_units: int = Field(
        0,
        ge=0,
        le=1024,
        description="radial convex units per block (cpflow.radial): steps of the map along"
        " |x| around the block's input origin, for radially structured data (rings); 0: none",
    )


class ConvPotential(_Spec):
    """A convolutional ICNN G(x) over images (3x3 convolutions, channel ActNorm)."""

    kind: Literal["conv"] = "conv"
    hidden: int = Field(64, ge=1, le=1024, description="ICNN channels")
    depth: int = Field(4, ge=1, le=16, description="ICNN hidden layers")
    activation: Activation = "logistic"
    symmetric_first: bool = True


class PICNNPotential(_Spec):
    """A partially input-convex network G(x; c), convex in x for every context c."""

    kind: Literal["picnn"] = "picnn"
    context_dim: int = Field(1, ge=1, le=4096, description="values per context row")
    context_hidden: int = Field(32, ge=1, le=4096, description="width of the context path")
    cut_context: bool = Field(True, description="context path cut after its first layer")
    hidden: int = Field(32, ge=2, le=4096)
    depth: int = Field(3, ge=1, le=16)
    icnn: Literal["vanilla", "augmented"] = "augmented"
    activation: Activation = "logistic"
    symmetric_first: bool = True
    zero_offset: bool = False
    icnn_actnorm: bool = True


class CouplingBlocks(_Spec):
    """Affine coupling blocks with checkerboard masks (not convex potentials: Table 2)."""

    kind: Literal["coupling"] = "coupling"
    hidden: int = Field(64, ge=1, le=1024, description="coupling network channels")


Potential = Annotated[
    ICNNPotential | ConvPotential | PICNNPotential | CouplingBlocks, Field(discriminator="kind")
]

_SPECS: dict[str, type[_Spec]] = {
    "icnn": ICNNPotential,
    "conv": ConvPotential,
    "picnn": PICNNPotential,
    "coupling": CouplingBlocks,
}
_LEGACY_KIND = {"conditional": "picnn", "multiscale": "conv"}


class FlowConfig(BaseModel):
    """Everything needed to rebuild a :class:`cpflow.CPFlow` (architecture and numerics).

    A stored model is this config (as JSON) plus a ``state_dict``; ``CPFlow(cfg)`` followed by
    ``load_state_dict`` rebuilds it exactly.

    Optimal transport: a single block with ``actnorm=False`` and ``standardization="isotropic"``
    is the gradient of one convex potential (see :attr:`is_gradient_map`); per-coordinate
    scalings around the block would break Brenier optimality. :meth:`transport` builds it.
    """

    model_config = ConfigDict(extra="forbid")

    dim: int = Field(ge=1, le=4096, description="data dimension d (C*H*W for images)")
    image_shape: tuple[int, int, int] | None = Field(
        None, description="(channels, height, width) for image data; rows are flat images"
    )
    blocks: int | list[int] = Field(
        5,
        description="number of blocks; for images a list, blocks per scale with a squeeze"
        " (2x2 patches -> channels) between scales",
    )
    potential: Potential = Field(default_factory=lambda: ICNNPotential.model_validate({}))
    actnorm: bool = Field(True, description="ActNorm layer before each block")
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
    exact_max_dim: int = Field(
        EXACT_MAX_DIM, ge=0, description="log_prob 'auto': exact up to this d"
    )
    exact_chunk: int | None = Field(
        None, ge=1, description="rows per exact log-det batch (bounds the (n, d, d) memory)"
    )
    inverse_solver: Literal["lbfgs", "newton"] = Field(
        "lbfgs", description="batched L-BFGS (paper) or damped Newton (analytic Hessian)"
    )
    inverse_tol: float | None = Field(None, gt=0.0, description="None: 1e-5 f32 / 1e-9 f64")
    inverse_max_iter: int = Field(1000, ge=1)
    lbfgs_history: int = Field(10, ge=1, le=100)
    dtype: Literal["float32", "float64"] = "float32"

    @model_validator(mode="before")
    @classmethod
    def _gather_potential(cls, data: Any) -> Any:
        """Accept the flat form: potential fields beside the flow's, and the legacy ``kind``
        (``conditional``, ``multiscale`` with ``input_shape`` and ``block_type``)."""
        if not isinstance(data, dict) or isinstance(data.get("potential"), BaseModel):
            return data
        data = dict(data)
        spec = dict(data.get("potential") or {})
        legacy = data.pop("kind", None)
        if "input_shape" in data:
            data["image_shape"] = data.pop("input_shape")
        coupling_hidden = data.pop("coupling_hidden", None)
        if data.pop("block_type", None) == "coupling":
            spec["kind"] = "coupling"
            if coupling_hidden is not None:
                data["hidden"] = coupling_hidden
        kind = spec.get("kind") or (legacy if legacy in _SPECS else _LEGACY_KIND.get(legacy or ""))
        if kind is None:
            kind = "picnn" if "context_dim" in data else "conv" if "image_shape" in data else None
        kind = kind or "icnn"
        if kind != "icnn" and data.get("radial_units"):
            what = "a conditional flow" if kind == "picnn" else f"a {kind!r} potential"
            raise ValueError(f"{what} has no radial units: use 0")
        if kind != "icnn":
            data.pop("radial_units", None)
        for name in _SPECS[kind].model_fields:
            if name != "kind" and name in data:
                spec[name] = data.pop(name)
        spec["kind"] = kind
        data["potential"] = spec
        if legacy is not None:  # stored configs carried every kind's fields; drop the others'
            for other in _SPECS.values():
                for name in set(other.model_fields) - set(cls.model_fields):
                    data.pop(name, None)
        shape = data.get("image_shape")
        if shape is not None and "dim" not in data and len(shape) == 3:
            data["dim"] = int(shape[0]) * int(shape[1]) * int(shape[2])
        if kind in ("conv", "coupling") and legacy == "multiscale":
            data.setdefault("exact_chunk", 32)
        return data

    @model_validator(mode="after")
    def _check(self) -> FlowConfig:
        kind = self.potential.kind
        image = kind in ("conv", "coupling")
        if image != (self.image_shape is not None):
            raise ValueError(
                f"a {kind!r} potential {'needs' if image else 'takes no'} image_shape"
                " (conv and coupling blocks act on images; icnn and picnn on rows)"
            )
        scales = self.blocks if isinstance(self.blocks, list) else [self.blocks]
        if not scales or min(scales) < 1 or sum(scales) > 64:
            raise ValueError("blocks: at least one block per scale, at most 64 in all")
        if len(scales) > 1 and self.image_shape is None:
            raise ValueError("blocks per scale (a list) apply to image flows only")
        if self.image_shape is not None:
            c, h, w = self.image_shape
            if min(c, h, w) < 1:
                raise ValueError("image_shape entries must be >= 1")
            if c * h * w != self.dim:
                raise ValueError(f"dim must be C*H*W = {c * h * w} for image_shape {(c, h, w)}")
            squeezes = len(scales) - 1
            if h % (2**squeezes) or w % (2**squeezes):
                raise ValueError(
                    f"height and width ({h}, {w}) must be divisible by 2^{squeezes} for "
                    f"{len(scales)} scales"
                )
        if kind == "picnn" and self.standardization == "whiten":
            raise ValueError("a conditional flow standardises per coordinate: use 'diagonal'")
        p = self.potential
        if isinstance(p, ICNNPotential) and p.icnn == "augmented" and p.hidden < 2:
            raise ValueError("an augmented ICNN needs hidden >= 2")
        return self

    # -- derived ----------------------------------------------------------------------------
    @property
    def scales(self) -> list[int]:
        """Blocks per scale (one scale unless ``blocks`` is a list)."""
        return list(self.blocks) if isinstance(self.blocks, list) else [self.blocks]

    @property
    def context_dim(self) -> int | None:
        """Values per context row for a conditional flow p(x | c), else None."""
        return self.potential.context_dim if self.potential.kind == "picnn" else None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input: (C, H, W) for images, (d,) for rows."""
        return tuple(self.image_shape) if self.image_shape is not None else (self.dim,)

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

    @property
    def is_gradient_map(self) -> bool:
        """True when transform() is the gradient of a single convex potential (an OT map)."""
        return (
            self.scales == [1]
            and not self.actnorm
            and self.standardization == "isotropic"
            and self.potential.kind != "coupling"
        )

    @classmethod
    def transport(cls, dim: int, **kwargs: Any) -> FlowConfig:
        """A config whose transform is a Brenier map: one block, no ActNorm, scalar std."""
        kwargs = {"blocks": 1, "actnorm": False, "standardization": "isotropic", **kwargs}
        return cls(dim=dim, **kwargs)

    @classmethod
    def image(cls, shape: tuple[int, int, int], blocks: list[int], **kwargs: Any) -> FlowConfig:
        """A multiscale image flow over ``shape`` = (C, H, W) (convolutional potentials unless
        ``kind="coupling"`` is given), e.g. ``FlowConfig.image((1, 8, 8), [2, 2, 2])``."""
        return cls(image_shape=(shape[0], shape[1], shape[2]), blocks=list(blocks), **kwargs)

    @classmethod
    def conditional(cls, dim: int, context_dim: int, **kwargs: Any) -> FlowConfig:
        """A conditional flow p(x | c) with PICNN potentials (the flat form: the validator
        gathers ``context_dim`` and the other potential fields into ``potential``)."""
        return cls.model_validate({"dim": dim, "context_dim": context_dim, **kwargs})
