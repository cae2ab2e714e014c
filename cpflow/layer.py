r"""The one interface every layer of a flow chain implements, so that :class:`~cpflow.CPFlow`
loops over its layers without asking what they are.

A layer maps rows h (n, d) to rows y (n, d) given its prepared weights ``w`` (from
``prepare(context)``: a conditional block's per-sample weights, None for layers without a
context). Each estimator of log|det dy/dh| the flow offers is one method, so a new layer kind
states how it takes part in every one of them; a missing method is a TypeError when the layer
is built (abstract), never a silent zero in a density:

* ``forward_and_logdet`` -- exact, the input-dependent part, (n,);
* ``constant_logdet`` -- the input-independent part, a scalar (e.g. an ActNorm's scales);
* ``forward_and_slq`` -- stochastic Lanczos quadrature estimates, one per probe (p, n);
* ``forward_and_surrogate`` -- the CG training surrogate of Algorithm 2 (its value is NOT a
  log-det, its parameter gradient is an unbiased estimate of the log-det's);
* ``forward_and_jacobian`` -- the chain rule J <- (dy/dh) J, for Newton steps on the whole map;
* ``invert`` -- h from y (exact, or a convex solve to ``InverseSolve.tol``);
* ``initialize`` -- data-dependent initialisation on a batch.

:class:`AffineLayer` implements the estimators once for every layer whose map is affine with an
input-independent Jacobian (ActNorm, standardisation, squeeze), which only say how they map,
invert, apply their linear part and what their constant log-det is.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor, nn

from .logdet import CGResult, rademacher
from .stats import TrainStatsCollector

__all__ = [
    "AffineLayer",
    "FlowLayer",
    "InverseSolve",
    "Prepared",
    "SLQProbes",
    "SurrogateProbes",
]


class Prepared(Protocol):
    """A potential's effective weights for a batch (see ``CPFlowBlock.prepare``)."""

    def select(self, idx: Tensor) -> Prepared:
        """The weights of the samples ``idx`` (the inverse solver drops converged samples)."""
        ...


@dataclass
class SLQProbes:
    """How a layer estimates its log-det by SLQ: ``probes`` Rademacher vectors per sample,
    ``steps`` Lanczos steps each, drawn from ``generator``."""

    probes: int
    steps: int
    generator: torch.Generator | None = None


@dataclass
class SurrogateProbes:
    """The CG surrogate's settings and its diagnostics for one pass over the chain.

    ``batch_rows = (start, total)``: the rows are start.. of a batch of ``total`` rows split
    over processes; probes are drawn for the whole batch and this part taken."""

    atol: float
    rtol: float
    max_iter: int | None
    generator: torch.Generator | None = None
    batch_rows: tuple[int, int] | None = None
    collector: TrainStatsCollector | None = None

    def draw(self, h: Tensor) -> Tensor:
        """One Rademacher probe per row of h (n, d)."""
        start, total = self.batch_rows or (0, h.shape[0])
        v = rademacher(
            (total, h.shape[1]), dtype=h.dtype, device=h.device, generator=self.generator
        )
        return v[start : start + h.shape[0]]

    def record(self, cg: CGResult, rayleigh: Tensor) -> None:
        """Keep one layer's CG solve and Rayleigh quotients for the pass's TrainStats."""
        if self.collector is not None:
            self.collector.add(cg, rayleigh)


@dataclass
class InverseSolve:
    """How a layer without a closed-form inverse solves for its input: to max|grad| <= tol in
    at most ``max_iter`` iterations of ``solver`` (L-BFGS keeps ``history`` pairs)."""

    tol: float
    max_iter: int
    solver: str = "lbfgs"
    history: int = 10


class FlowLayer(nn.Module, ABC):
    """One invertible layer of a flow chain (see the module docstring for the contract).

    ``is_block``: True for the layers that carry a learned nonlinear map (what
    ``CPFlow.blocks()`` lists), False for shape and normalisation layers."""

    is_block: ClassVar[bool]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if not inspect.isabstract(cls) and not hasattr(cls, "is_block"):
            raise TypeError(f"{cls.__name__} must say whether it is a block (is_block)")

    @abstractmethod
    def prepare(self, context: Tensor | None) -> Prepared | None:
        """The weights for a batch of (standardised) contexts, None where none are needed."""

    @abstractmethod
    def forward(self, x: Tensor, w: Prepared | None = None) -> Tensor:
        """y = f(x) for rows x (n, d)."""

    @abstractmethod
    def forward_and_logdet(self, x: Tensor, w: Prepared | None = None) -> tuple[Tensor, Tensor]:
        """(y, the input-dependent part of log|det dy/dx| per row (n,)), exact."""

    @abstractmethod
    def constant_logdet(self) -> Tensor:
        """The input-independent part of log|det dy/dx| (a scalar)."""

    @abstractmethod
    def forward_and_slq(
        self, x: Tensor, w: Prepared | None, probes: SLQProbes
    ) -> tuple[Tensor, Tensor]:
        """(y, estimates (p, n) of the input-dependent log-det, one row per probe)."""

    @abstractmethod
    def forward_and_surrogate(
        self, x: Tensor, w: Prepared | None, probes: SurrogateProbes
    ) -> tuple[Tensor, Tensor]:
        """(y, a per-row term (n,) whose parameter gradient is (an unbiased estimate of) that
        of the input-dependent log-det)."""

    @abstractmethod
    def forward_and_jacobian(
        self, x: Tensor, w: Prepared | None, J: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(y, (dy/dx) J) for a batch of matrices J (n, d, d)."""

    @abstractmethod
    def invert(
        self, y: Tensor, w: Prepared | None, solve: InverseSolve, x0: Tensor | None = None
    ) -> tuple[Tensor, int]:
        """(x with f(x) = y, the most solver iterations a row took (0 in closed form));
        ``x0`` is a starting point for a layer that solves."""

    @abstractmethod
    def initialize(self, x: Tensor, context: Tensor | None = None) -> None:
        """Data-dependent initialisation on a batch of inputs (and their contexts)."""


class AffineLayer(FlowLayer):
    """A layer y = A x + b whose A does not depend on x: its log-det is a constant, so every
    estimator is exact and the input-dependent part is zero."""

    is_block = False

    @abstractmethod
    def forward(self, x: Tensor, w: Prepared | None = None) -> Tensor:
        """y = A x + b."""

    @abstractmethod
    def inverse(self, y: Tensor) -> Tensor:
        """x = A^-1 (y - b)."""

    @abstractmethod
    def linear(self, v: Tensor) -> Tensor:
        """A v for rows v (m, d)."""

    @abstractmethod
    def logdet(self) -> Tensor:
        """log|det A| (a scalar)."""

    def constant_logdet(self) -> Tensor:
        return self.logdet()

    def prepare(self, context: Tensor | None) -> None:
        return None

    def forward_and_logdet(self, x: Tensor, w: Prepared | None = None) -> tuple[Tensor, Tensor]:
        return self(x), x.new_zeros(x.shape[0])

    def forward_and_slq(
        self, x: Tensor, w: Prepared | None, probes: SLQProbes
    ) -> tuple[Tensor, Tensor]:
        return self(x), x.new_zeros(probes.probes, x.shape[0])

    def forward_and_surrogate(
        self, x: Tensor, w: Prepared | None, probes: SurrogateProbes
    ) -> tuple[Tensor, Tensor]:
        return self(x), x.new_zeros(x.shape[0])

    def forward_and_jacobian(
        self, x: Tensor, w: Prepared | None, J: Tensor
    ) -> tuple[Tensor, Tensor]:
        n, d = x.shape
        AJ = self.linear(J.transpose(1, 2).reshape(n * d, d))  # A acts on J's columns
        return self(x), AJ.reshape(n, d, d).transpose(1, 2)

    def invert(
        self, y: Tensor, w: Prepared | None, solve: InverseSolve, x0: Tensor | None = None
    ) -> tuple[Tensor, int]:
        return self.inverse(y), 0

    def initialize(self, x: Tensor, context: Tensor | None = None) -> None:
        """Nothing to learn from data (ActNorm overrides this)."""
