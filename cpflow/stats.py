r"""Diagnostics of a surrogate (Algorithm 2) evaluation, shared by every flow kind."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .logdet import CGResult

__all__ = ["TrainStats", "TrainStatsCollector"]


@dataclass
class TrainStats:
    """Diagnostics of one surrogate evaluation (floats, ready to log).

    ``base_nll`` is the -log N(z) part only; the loss itself is a gradient surrogate, NOT an
    NLL. ``hessian_rayleigh_*`` are v^T H v / v^T v over probes (a cheap view of H's spread).
    """

    cg_iterations_mean: float
    cg_iterations_max: int
    cg_converged_fraction: float
    cg_residual_max: float
    base_nll: float
    hessian_rayleigh_min: float
    hessian_rayleigh_max: float
    per_block_cg_iterations: list[float] = field(default_factory=list)


class TrainStatsCollector:
    """Gathers each block's CG result and Rayleigh quotients during one surrogate pass."""

    def __init__(self) -> None:
        self._iterations: list[float] = []
        self._iterations_max = 0
        self._converged: list[Tensor] = []
        self._residual_max = 0.0
        self._rayleigh: list[Tensor] = []

    def add(self, cg: CGResult, rayleigh: Tensor) -> None:
        """Record one block's CG solve and its probes' v^T H v / v^T v."""
        with torch.no_grad():
            self._iterations.append(float(cg.iterations.float().mean()))
            self._iterations_max = max(self._iterations_max, int(cg.iterations.max()))
            self._converged.append(cg.converged.float().reshape(-1))
            self._residual_max = max(self._residual_max, float(cg.residual_inf.max()))
            self._rayleigh.append(rayleigh.detach().reshape(-1))

    def finish(self, base_log_prob: Tensor) -> TrainStats:
        """The stats of the pass, given the base-density log-probabilities of its outputs."""
        rq = torch.cat(self._rayleigh) if self._rayleigh else torch.ones(1)
        conv = torch.cat(self._converged) if self._converged else None
        return TrainStats(
            cg_iterations_mean=sum(self._iterations) / max(len(self._iterations), 1),
            cg_iterations_max=self._iterations_max,
            cg_converged_fraction=float(conv.mean()) if conv is not None else 1.0,
            cg_residual_max=self._residual_max,
            base_nll=float(-base_log_prob.detach().mean()),
            hessian_rayleigh_min=float(rq.min()),
            hessian_rayleigh_max=float(rq.max()),
            per_block_cg_iterations=list(self._iterations),
        )
