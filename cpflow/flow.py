r"""CPFlow: standardisation -> [ActNorm -> CP-Flow block] x blocks -> N(0, I).

``log_prob`` is exact (batched analytic Hessians + Cholesky) or estimated by SLQ;
``training_loss`` is the CG surrogate of Algorithm 2 (its value is NOT a log-likelihood);
``inverse`` solves one strongly convex problem per block and sample, last block first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .block import CPFlowBlock
from .config import FlowConfig
from .icnn import ICNN
from .inverse import minimize_batched
from .layers import ActNorm, Standardization
from .logdet import rademacher, slq_logdet
from .radial import RadialTerm
from .stats import TrainStats, TrainStatsCollector

__all__ = ["CPFlow", "InverseInfo", "TrainStats"]

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class InverseInfo:
    """How exact an inverse is: residual (n,) = max|transform(x) - z| per sample (measured by a
    final forward pass), converged (n,) = residual <= tol, iterations = max solver iterations
    over blocks and samples."""

    residual: Tensor
    converged: Tensor
    iterations: int
    tol: float = 0.0

    @property
    def max_residual(self) -> float:
        return float(self.residual.max()) if self.residual.numel() else 0.0

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())


def refine_misses(
    x: Tensor,
    residual: Tensor,
    tol: float,
    rounds: int,
    solve: Callable[[Tensor], tuple[Tensor, int]],
    measure: Callable[[Tensor, Tensor], Tensor],
) -> int:
    """Re-solve the samples whose end-to-end residual is above ``tol``, up to ``rounds`` times,
    each sample keeping its better estimate (``x`` and ``residual`` are updated in place).

    ``solve(miss)`` gives new estimates for the rows ``miss`` and the iterations that took;
    ``measure(miss, x_new)`` their residuals. Returns the most iterations a round took."""
    iters = 0
    for _ in range(rounds):
        miss = (residual > tol).nonzero().squeeze(1)
        if miss.numel() == 0:
            break
        xr, itr = solve(miss)
        rr = measure(miss, xr)
        better = rr < residual[miss]
        x[miss] = torch.where(better.unsqueeze(-1), xr, x[miss])
        residual[miss] = torch.minimum(rr, residual[miss])
        iters = max(iters, itr)
    return iters


class CPFlow(nn.Module):
    """A convex potential flow over R^d with a standard normal base (see module docstring)."""

    def __init__(self, config: FlowConfig) -> None:
        super().__init__()
        if not isinstance(config, FlowConfig):
            config = FlowConfig.model_validate(config)
        self.config = config
        self.dim = config.dim
        self.standardization = Standardization(config.dim, full=config.standardization == "whiten")
        layers: list[nn.Module] = []
        for _ in range(config.blocks):
            if config.actnorm:
                layers.append(ActNorm(config.dim))
            icnn = ICNN(
                config.dim,
                config.hidden,
                config.depth,
                config.icnn,
                config.activation,
                symmetric_first=config.symmetric_first,
                zero_offset=config.zero_offset,
                actnorm=config.icnn_actnorm,
            )
            radial = (
                RadialTerm(config.dim, config.radial_units, config.activation)
                if config.radial_units
                else None
            )
            layers.append(CPFlowBlock(icnn, init_gain=config.init_gain, radial=radial))
        self.layers = nn.ModuleList(layers)
        self.to(config.torch_dtype)

    # -- helpers --------------------------------------------------------------------------------
    @property
    def _ref(self) -> Tensor:
        return self.standardization.mean

    def _as_input(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected inputs of shape (n, {self.dim}), got {tuple(x.shape)}")
        return x.to(dtype=self._ref.dtype, device=self._ref.device)

    @staticmethod
    def _base_log_prob(z: Tensor) -> Tensor:
        return -0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * _LOG_2PI

    def blocks(self) -> list[CPFlowBlock]:
        return [m for m in self.layers if isinstance(m, CPFlowBlock)]

    # -- set-up ---------------------------------------------------------------------------------
    def set_standardization(self, mean: Tensor, scale: Tensor) -> None:
        """Fix the affine input layer. ``scale`` is the per-coordinate std, z = (x - mean) / std
        (made one scalar if the config says ``standardization="isotropic"``), or, for
        ``standardization="whiten"``, the (d, d) covariance: z = L^-1 (x - mean). Buffers: saved
        with the weights."""
        if self.config.standardization == "whiten":
            self.standardization.set_covariance(mean, scale)
            return
        self.standardization.set(mean, scale, isotropic=self.config.standardization == "isotropic")

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Data-dependent ActNorm initialisation on a batch x (raw data), layer by layer."""
        h = self.standardization(self._as_input(x))
        for layer in self.layers:
            if isinstance(layer, ActNorm):
                layer.initialize(h)
            else:
                layer.icnn.initialize(h)
            h = layer(h)

    @property
    def initialized(self) -> bool:
        """True once every ActNorm has been data-initialised (or loaded initialised)."""
        flags = [b for name, b in self.named_buffers() if name.endswith("initialized")]
        return all(bool(f) for f in flags)

    # -- forward maps ---------------------------------------------------------------------------
    def transform(self, x: Tensor) -> Tensor:
        """Forward map x -> z (standardisation, ActNorms and block gradients; no autograd)."""
        h = self.standardization(self._as_input(x))
        for layer in self.layers:
            h = layer(h)
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.transform(x)

    def _const_logdet(self) -> Tensor:
        total = self.standardization.logdet()
        for layer in self.layers:
            if isinstance(layer, ActNorm):
                total = total + layer.logdet()
        return total

    def log_prob(
        self,
        x: Tensor,
        method: str = "exact",
        *,
        probes: int | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        return_stderr: bool = False,
    ):
        """log p(x) (n,) of raw inputs. ``exact``: Cholesky of analytic Hessians; ``slq``:
        stochastic Lanczos quadrature (with a standard error across probes); ``auto``: exact up
        to ``config.exact_max_dim`` dimensions. With ``return_stderr`` returns (value, stderr),
        stderr None for exact."""
        if method == "auto":
            method = "exact" if self.dim <= self.config.exact_max_dim else "slq"
        if method not in ("exact", "slq"):
            raise ValueError(f"unknown method {method!r}; use 'exact', 'slq' or 'auto'")
        h = self.standardization(self._as_input(x))
        stderr = None
        if method == "exact":
            logdet = torch.zeros(h.shape[0], dtype=h.dtype, device=h.device)
            for layer in self.layers:
                if isinstance(layer, CPFlowBlock):
                    h, ld = layer.forward_and_logdet(h)
                    logdet = logdet + ld
                else:
                    h = layer(h)
        else:
            p = probes or self.config.slq_probes
            m = steps or self.config.slq_steps
            per_probe = torch.zeros(p, h.shape[0], dtype=h.dtype, device=h.device)
            for layer in self.layers:
                if isinstance(layer, CPFlowBlock):
                    y, hvp = layer.linearize(h)
                    v = rademacher(
                        (p, *h.shape), dtype=h.dtype, device=h.device, generator=generator
                    )
                    per_probe = per_probe + slq_logdet(hvp, v, m)
                    h = y
                else:
                    h = layer(h)
            logdet = per_probe.mean(0)
            if p > 1:
                stderr = per_probe.std(0, unbiased=True) / math.sqrt(p)
            else:
                stderr = torch.full_like(logdet, float("nan"))
        out = self._base_log_prob(h) + logdet + self._const_logdet()
        return (out, stderr) if return_stderr else out

    # -- training -------------------------------------------------------------------------------
    def training_loss(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, TrainStats]:
        """Surrogate loss (Algorithm 2) whose backward() is an unbiased estimate of the gradient
        of the mean NLL of x.

        WARNING: the returned loss VALUE IS NOT A NEGATIVE LOG-LIKELIHOOD (the log-det terms are
        replaced by z^T H v with z = CG(H, v) detached). Use ``log_prob`` to report NLLs.
        """
        cfg = self.config
        h = self.standardization(self._as_input(x))
        n = h.shape[0]
        surrogate = torch.zeros(n, dtype=h.dtype, device=h.device)
        collector = TrainStatsCollector()
        for layer in self.layers:
            if not isinstance(layer, CPFlowBlock):
                h = layer(h)
                continue
            v = rademacher(tuple(h.shape), dtype=h.dtype, device=h.device, generator=generator)
            y, surr, cg, rq = layer.logdet_surrogate(
                h, v, atol=cfg.cg_atol, rtol=cfg.cg_rtol, max_iter=cfg.cg_max_iter
            )
            surrogate = surrogate + surr
            collector.add(cg, rq)
            h = y
        base = self._base_log_prob(h)
        loss = -(base + surrogate + self._const_logdet()).mean()
        return loss, collector.finish(base)

    # -- inverse and sampling -------------------------------------------------------------------
    @torch.no_grad()
    def inverse(
        self,
        z: Tensor,
        tol: float | None = None,
        max_iter: int | None = None,
        *,
        solver: str | None = None,
    ) -> tuple[Tensor, InverseInfo]:
        """x with transform(x) = z, blocks inverted last to first by batched per-sample convex
        minimisation. The returned InverseInfo says, per sample, how exact x is."""
        cfg = self.config
        tol = cfg.default_inverse_tol if tol is None else float(tol)
        max_iter = cfg.inverse_max_iter if max_iter is None else int(max_iter)
        solver = solver or cfg.inverse_solver
        z = self._as_input(z)
        # Errors of early blocks are amplified by later ones, so each block is solved to tol/10
        # (solving to tol left ~95% of samples above tol end to end on trained models). The
        # few that still miss are polished end to end: Newton on the whole map, with its
        # Jacobian built from the blocks' Hessians where dense Hessians are affordable
        # (d <= exact_max_dim; it converges in one or two steps), else one more pass of
        # L-BFGS at tol/100, each block warm-started from the current estimate.
        x, iters = self._inverse_pass(z, tol * 0.1, max_iter, solver)
        residual = (self.transform(x) - z).abs().amax(-1)

        def polish(miss: Tensor) -> tuple[Tensor, int]:
            if self.dim <= cfg.exact_max_dim:
                return self._newton_polish(x[miss], z[miss], steps=min(3, max_iter)), 0
            return self._inverse_pass(
                z[miss], tol * 0.01, min(max_iter, 100), solver, start=x[miss]
            )

        def measure(miss: Tensor, xr: Tensor) -> Tensor:
            return (self.transform(xr) - z[miss]).abs().amax(-1)

        iters = max(iters, refine_misses(x, residual, tol, 1, polish, measure))
        # the end-to-end residual is measured, so it decides: never flag a sample above tol
        converged = (residual <= tol) & torch.isfinite(residual)
        return x, InverseInfo(residual, converged, iters, tol)

    @torch.no_grad()
    def _inverse_pass(
        self, z: Tensor, tol: float, max_iter: int, solver: str, start: Tensor | None = None
    ) -> tuple[Tensor, int]:
        """One pass through the layers, last to first; ``start`` (an estimate of x) gives each
        block's solve its starting point (where the estimate's forward pass puts its input).
        Returns x and the most iterations a block took (InverseInfo judges x end to end)."""
        starts: dict[int, Tensor] = {}
        if start is not None:
            h = self.standardization(start)
            for i, layer in enumerate(self.layers):
                if isinstance(layer, CPFlowBlock):
                    starts[i] = h
                h = layer(h)
        h = z
        iters = 0
        for i in reversed(range(len(self.layers))):
            layer = self.layers[i]
            if isinstance(layer, CPFlowBlock):
                res = invert_block(
                    layer,
                    h,
                    tol=tol,
                    max_iter=max_iter,
                    solver=solver,
                    history=self.config.lbfgs_history,
                    x0=starts.get(i),
                )
                h = res.x
                iters = max(iters, int(res.iterations.max()) if res.iterations.numel() else 0)
            else:
                h = layer.inverse(h)
        return self.standardization.inverse(h), iters

    def _newton_polish(self, x: Tensor, z: Tensor, steps: int) -> Tensor:
        """Newton steps on the whole map in standardised coordinates: h <- h - J(h)^-1 (T(h) - z),
        J the product of the ActNorm scales and the blocks' Hessians (exact, in batch). Each
        sample keeps its best iterate, so a step that round-off spoils is never taken."""
        h = self.standardization(x)
        best_h, best_r = h, torch.full_like(z[:, 0], float("inf"))
        eye = torch.eye(self.dim, dtype=h.dtype, device=h.device)
        for _ in range(steps + 1):
            y, J = h, eye.expand(h.shape[0], -1, -1)
            for layer in self.layers:
                if isinstance(layer, CPFlowBlock):
                    y, H = layer.forward_and_hessian(y)
                    J = H @ J
                else:  # ActNorm: y -> (y + shift) * scale
                    y = layer(y)
                    J = layer.scale().unsqueeze(-1) * J
            r = y - z
            rmax = r.abs().amax(-1)
            gain = rmax < best_r
            best_h = torch.where(gain.unsqueeze(-1), h, best_h)
            best_r = torch.where(gain, rmax, best_r)
            delta, info = torch.linalg.solve_ex(J, r)
            h = h - torch.where((info == 0).unsqueeze(-1), delta, torch.zeros_like(delta))
        return self.standardization.inverse(best_h)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        tol: float | None = None,
        max_iter: int | None = None,
    ) -> tuple[Tensor, InverseInfo]:
        """n samples in data units (inverse of base draws) plus their InverseInfo."""
        gen_device = generator.device if generator is not None else self._ref.device
        z = torch.randn(n, self.dim, generator=generator, device=gen_device, dtype=self._ref.dtype)
        return self.inverse(z.to(self._ref.device), tol=tol, max_iter=max_iter)


def invert_block(
    block: CPFlowBlock,
    y: Tensor,
    *,
    tol: float,
    max_iter: int,
    solver: str = "lbfgs",
    history: int = 10,
    x0: Tensor | None = None,
):
    """Solve f(x) = y for one block: argmin_x F(x) - y^T x (Algorithm 1), per sample, from
    ``x0`` (default y / alpha)."""

    weights = block.icnn.weights()  # the parameters are fixed during the solve

    def fg(x: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        val, grad = block.value_and_grad(x, weights)
        yi = y[idx]
        return val - (yi * x).sum(-1), grad - yi

    def hess(x: Tensor, idx: Tensor) -> Tensor:
        return block.forward_and_hessian(x)[1]

    if x0 is None:
        # f(x) = alpha x + (bounded ICNN gradient), so y / alpha is close for far-out points
        x0 = y / block.coefficients()[0]
    return minimize_batched(
        fg, x0, tol=tol, max_iter=max_iter, history=history, method=solver, hessian=hess
    )
