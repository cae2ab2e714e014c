r"""CPFlow: standardisation -> [ActNorm -> block] x blocks (-> squeeze -> ...) -> N(0, I).

One flow type for tabular data, images and conditional densities p(x | c); what differs is the
blocks' convex potential (:mod:`cpflow.config`) and the shape layers between blocks (ActNorm
per coordinate or per channel; for images a squeeze between scales, undone at the end so that
z keeps the input's layout). Every map takes an optional ``context`` (rows of c for a
conditional flow; refused by the others).

``log_prob`` is exact (batched analytic Hessians + Cholesky) or estimated by SLQ;
``training_loss`` is the CG surrogate of Algorithm 2 (its value is NOT a log-likelihood);
``inverse`` solves one strongly convex problem per block and sample, last block first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast, overload

import torch
from torch import Tensor, nn

from .chain import build_layers
from .config import FlowConfig
from .context import ContextError, check_context
from .layer import FlowLayer, InverseSolve, SLQProbes, SurrogateProbes
from .layers import Standardization
from .stats import TrainStats, TrainStatsCollector

__all__ = ["CPFlow", "InverseInfo", "TrainStats", "as_flat_images"]

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


EXACT_CACHE_BYTES = 2 * 2**20
"""Bytes of the (rows, d, d) Hessians of one exact log-det batch on a CPU when the config
sets no ``exact_chunk``: a batch that size stays in cache through a block's Hessian assembly
and Cholesky. At d = 43 (n = 1024, 5 blocks, one thread) batches of 256-512 rows scored 1.3-1.45x
faster than the whole batch at once, which also spent ~20% of its time faulting in fresh pages."""
EXACT_MIN_ROWS = 256  # below this the per-batch Python overhead shows (d = 16-64 measured)


def exact_rows(n: int, dim: int, like: Tensor) -> int:
    """Rows per exact log-det batch when the config sets none: all n off the CPU, else the
    rows whose Hessians fill :data:`EXACT_CACHE_BYTES` (at least :data:`EXACT_MIN_ROWS`)."""
    if like.device.type != "cpu":
        return max(n, 1)
    fit = EXACT_CACHE_BYTES // (dim * dim * like.element_size())
    return max(min(n, max(fit, EXACT_MIN_ROWS)), 1)


def as_flat_images(x: Tensor, shape: tuple[int, int, int]) -> tuple[Tensor, bool]:
    """(rows (n, C*H*W), was_image) from rows or images; ValueError names both shapes."""
    c, h, w = shape
    d = c * h * w
    if x.ndim == 4 and tuple(x.shape[1:]) == (c, h, w):
        return x.reshape(x.shape[0], d), True
    if x.ndim == 2 and x.shape[1] == d:
        return x, False
    raise ValueError(
        f"expected images of shape [n, {c}, {h}, {w}] or rows [n, {d}], got {list(x.shape)}"
    )


def _legacy_state_keys(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """Conditional models stored before the one-flow design named a block's PICNN ``picnn``."""
    for key in [k for k in state_dict if ".picnn." in k]:
        state_dict[key.replace(".picnn.", ".icnn.")] = state_dict.pop(key)


class CPFlow(nn.Module):
    """A convex potential flow with a standard normal base (see module docstring).

    Its map is one chain of :class:`~cpflow.layer.FlowLayer`: the standardisation, then
    ``layers``; every method loops over the chain through that interface."""

    standardization: Standardization
    context_standardization: Standardization | None

    def __init__(self, config: FlowConfig | dict) -> None:
        super().__init__()
        if not isinstance(config, FlowConfig):
            config = FlowConfig.model_validate(config)
        self.config = config
        self.dim = config.dim
        self.input_shape = config.input_shape
        self.context_dim = config.context_dim
        self.standardization = Standardization(config.dim, full=config.standardization == "whiten")
        self.context_standardization = (
            Standardization(self.context_dim) if self.context_dim else None
        )
        self.layers = nn.ModuleList(build_layers(config))
        self.to(config.torch_dtype)
        self.register_load_state_dict_pre_hook(_legacy_state_keys)

    # -- helpers --------------------------------------------------------------------------------
    @property
    def _ref(self) -> Tensor:
        return self.standardization.mean

    def _as_input(self, x: Tensor) -> tuple[Tensor, bool]:
        """(flat rows in the flow's dtype and device, whether x came as images)."""
        x = torch.as_tensor(x)
        if self.config.image_shape is not None:
            rows, was_image = as_flat_images(x, self.config.image_shape)
        elif x.ndim == 2 and x.shape[1] == self.dim:
            rows, was_image = x, False
        else:
            raise ValueError(f"expected inputs of shape (n, {self.dim}), got {tuple(x.shape)}")
        return rows.to(dtype=self._ref.dtype, device=self._ref.device), was_image

    def _as_context(self, context: object, n: int) -> Tensor | None:
        """Standardised contexts (n, context_dim) (one row is broadcast), or None for a flow
        without context; a context that cannot go with the inputs is a ContextError."""
        if self.context_dim is None:
            if context is not None:
                raise ContextError(
                    "context_not_accepted", "this flow is not conditional: omit the context"
                )
            return None
        c = check_context(context, n, self.context_dim)
        assert self.context_standardization is not None  # built whenever context_dim is set
        return self.context_standardization(c.to(dtype=self._ref.dtype, device=self._ref.device))

    def _out(self, rows: Tensor, was_image: bool) -> Tensor:
        return rows.reshape(rows.shape[0], *self.input_shape) if was_image else rows

    @staticmethod
    def _base_log_prob(z: Tensor) -> Tensor:
        return -0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * _LOG_2PI

    def _layers(self) -> list[FlowLayer]:
        """The layers after the standardisation (``build_layers`` makes only FlowLayers)."""
        return cast(list[FlowLayer], list(self.layers))

    def _chain_layers(self) -> list[FlowLayer]:
        """The whole map x -> z: the standardisation, then the layers."""
        return [self.standardization, *self._layers()]

    def blocks(self) -> list[FlowLayer]:
        """The blocks in order (CP-Flow blocks, or coupling blocks for the ablation)."""
        return [m for m in self._layers() if m.is_block]

    def _chain(self, x: Tensor, cc: Tensor | None) -> Tensor:
        """The forward map of raw rows x (standardisation included)."""
        for layer in self._chain_layers():
            x = layer(x, layer.prepare(cc))
        return x

    def _const_logdet(self) -> Tensor:
        """The input-independent part of log|det dz/dx| (standardisation and ActNorms)."""
        first, *rest = self._chain_layers()
        total = first.constant_logdet()
        for layer in rest:
            total = total + layer.constant_logdet()
        return total

    # -- set-up ---------------------------------------------------------------------------------
    def set_standardization(
        self,
        mean: Tensor | float,
        scale: Tensor | float,
        context_mean: Tensor | None = None,
        context_std: Tensor | None = None,
    ) -> None:
        """Fix the affine input layer. ``scale`` is the per-coordinate std, z = (x - mean) / std
        (scalars apply to every coordinate; made one scalar if the config says
        ``standardization="isotropic"``), or, for ``standardization="whiten"``, the (d, d)
        covariance: z = L^-1 (x - mean). A conditional flow also takes the context's mean and
        std. Buffers: saved with the weights."""
        mean, scale = torch.as_tensor(mean), torch.as_tensor(scale)
        if self.config.standardization == "whiten":
            self.standardization.set_covariance(mean, scale)
        else:
            iso = self.config.standardization == "isotropic"
            self.standardization.set(mean, scale, isotropic=iso)
        if context_mean is None and context_std is None:
            return
        if self.context_standardization is None:
            raise ValueError("this flow is not conditional: it has no context standardisation")
        dim = self.context_standardization.dim
        cm = torch.zeros(dim) if context_mean is None else context_mean
        cs = torch.ones(dim) if context_std is None else context_std
        self.context_standardization.set(cm, cs)

    @torch.no_grad()
    def initialize(self, x: Tensor, context: Tensor | None = None) -> None:
        """Data-dependent ActNorm initialisation on a batch of raw (x, c), layer by layer."""
        h, _ = self._as_input(x)
        cc = self._as_context(context, h.shape[0])
        for layer in self._chain_layers():
            layer.initialize(h, cc)
            h = layer(h, layer.prepare(cc))

    @property
    def initialized(self) -> bool:
        """True once every ActNorm has been data-initialised (or loaded initialised)."""
        flags = [b for name, b in self.named_buffers() if name.endswith("initialized")]
        return all(bool(f) for f in flags)

    # -- forward maps ---------------------------------------------------------------------------
    def transform(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Forward map x -> z (in the layout of x), given c for a conditional flow."""
        rows, was_image = self._as_input(x)
        return self._out(self._chain(rows, self._as_context(context, rows.shape[0])), was_image)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.transform(x, context)

    def _logdet_chain(
        self, rows: Tensor, cc: Tensor | None, prepared: list | None = None
    ) -> tuple[Tensor, Tensor]:
        """(z, the input-dependent part of the exact log-det) for raw rows; ``prepared``: the
        layers' weights when the caller has them (batches of a flow without context)."""
        h, logdet = rows, rows.new_zeros(rows.shape[0])
        for i, layer in enumerate(self._chain_layers()):
            w = layer.prepare(cc) if prepared is None else prepared[i]
            h, ld = layer.forward_and_logdet(h, w)
            logdet = logdet + ld
        return h, logdet

    def transform_and_logdet(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(z, log|det dz/dx|) with exact Cholesky log-dets; differentiable in the parameters,
        x and c (useful as a flow layer, e.g. an amortised posterior)."""
        rows, was_image = self._as_input(x)
        z, logdet = self._logdet_chain(rows, self._as_context(context, rows.shape[0]))
        return self._out(z, was_image), logdet + self._const_logdet()

    @overload
    def log_prob(
        self,
        x: Tensor,
        context: Tensor | None = None,
        method: str = "exact",
        *,
        probes: int | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        return_stderr: Literal[False] = False,
    ) -> Tensor: ...

    @overload
    def log_prob(
        self,
        x: Tensor,
        context: Tensor | None = None,
        method: str = "exact",
        *,
        probes: int | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        return_stderr: Literal[True],
    ) -> tuple[Tensor, Tensor | None]: ...

    def log_prob(
        self,
        x: Tensor,
        context: Tensor | None = None,
        method: str = "exact",
        *,
        probes: int | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        return_stderr: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor | None]:
        """log p(x) (n,) of raw inputs (log p(x | c) for a conditional flow). ``exact``:
        Cholesky of analytic Hessians (``config.exact_chunk`` rows at a time; unset, a
        cache-sized batch on a CPU, :func:`exact_rows`); ``slq``:
        stochastic Lanczos quadrature (with a standard error across probes); ``auto``: exact
        up to ``config.exact_max_dim`` dimensions. With ``return_stderr`` returns (value,
        stderr), stderr None for exact."""
        if method == "auto":
            method = "exact" if self.dim <= self.config.exact_max_dim else "slq"
        if method not in ("exact", "slq"):
            raise ValueError(f"unknown method {method!r}; use 'exact', 'slq' or 'auto'")
        rows, _ = self._as_input(x)
        n = rows.shape[0]
        cc = self._as_context(context, n)
        stderr = None
        if method == "slq":
            out, stderr = self._slq(rows, cc, probes, steps, generator)
            return (out, stderr) if return_stderr else out
        chunk = self.config.exact_chunk or exact_rows(n, self.dim, rows)
        # without a context the weights are the same for every batch: prepared once
        prepared = None if cc is not None else [ly.prepare(None) for ly in self._chain_layers()]
        parts = []
        for i in range(0, n, chunk):
            c_part = None if cc is None else cc[i : i + chunk]
            z, logdet = self._logdet_chain(rows[i : i + chunk], c_part, prepared)
            parts.append(self._base_log_prob(z) + logdet + self._const_logdet())
        out = torch.cat(parts) if parts else rows.new_zeros(0)
        return (out, stderr) if return_stderr else out

    def _slq(
        self,
        rows: Tensor,
        cc: Tensor | None,
        probes: int | None,
        steps: int | None,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor]:
        spec = SLQProbes(
            probes or self.config.slq_probes, steps or self.config.slq_steps, generator
        )
        h, per_probe = rows, rows.new_zeros(spec.probes, rows.shape[0])
        for layer in self._chain_layers():
            h, estimates = layer.forward_and_slq(h, layer.prepare(cc), spec)
            per_probe = per_probe + estimates
        logdet = per_probe.mean(0)
        if spec.probes > 1:
            stderr = per_probe.std(0, unbiased=True) / math.sqrt(spec.probes)
        else:
            stderr = torch.full_like(logdet, float("nan"))
        return self._base_log_prob(h) + logdet + self._const_logdet(), stderr

    # -- training -------------------------------------------------------------------------------
    def training_loss(
        self,
        x: Tensor,
        context: Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        batch_rows: tuple[int, int] | None = None,
    ) -> tuple[Tensor, TrainStats]:
        """Surrogate loss (Algorithm 2) whose backward() is an unbiased estimate of the gradient
        of the mean NLL of x (given c).

        ``batch_rows = (start, total)``: x is rows start.. of a batch of ``total`` rows split over
        processes: the probes are drawn for the whole batch and this part taken, so that the
        split batch sees exactly the probes an unsplit one would.

        WARNING: the returned loss VALUE IS NOT A NEGATIVE LOG-LIKELIHOOD (the log-det terms are
        replaced by z^T H v with z = CG(H, v) detached). Use ``log_prob`` to report NLLs.
        Coupling blocks contribute their exact log-det.
        """
        cfg = self.config
        rows, _ = self._as_input(x)
        cc = self._as_context(context, rows.shape[0])
        collector = TrainStatsCollector()
        probes = SurrogateProbes(
            atol=cfg.cg_atol, rtol=cfg.cg_rtol, max_iter=cfg.cg_max_iter, generator=generator,
            batch_rows=batch_rows, collector=collector,
        )  # fmt: skip
        h, surrogate = rows, rows.new_zeros(rows.shape[0])
        for layer in self._chain_layers():
            h, term = layer.forward_and_surrogate(h, layer.prepare(cc), probes)
            surrogate = surrogate + term
        base = self._base_log_prob(h)
        loss = -(base + surrogate + self._const_logdet()).mean()
        return loss, collector.finish(base)

    # -- inverse and sampling -------------------------------------------------------------------
    @torch.no_grad()
    def inverse(
        self,
        z: Tensor,
        context: Tensor | None = None,
        tol: float | None = None,
        max_iter: int | None = None,
        *,
        solver: str | None = None,
    ) -> tuple[Tensor, InverseInfo]:
        """x with transform(x, c) = z (in the layout of z), blocks inverted last to first by
        batched per-sample convex minimisation. The returned InverseInfo says, per sample, how
        exact x is."""
        cfg = self.config
        tol = cfg.default_inverse_tol if tol is None else float(tol)
        max_iter = cfg.inverse_max_iter if max_iter is None else int(max_iter)
        solver = solver or cfg.inverse_solver
        rows, was_image = self._as_input(z)
        cc = self._as_context(context, rows.shape[0])
        # Errors of early blocks are amplified by later ones, so each block is solved to tol/10
        # (solving to tol left ~95% of samples above tol end to end on trained models). The
        # few that still miss are polished end to end (up to two rounds): Newton on the whole
        # map, with its Jacobian built from the blocks' Hessians where dense Hessians are
        # affordable (d <= exact_max_dim; it converges in one or two steps), else one more
        # pass of L-BFGS at tol/100, each block warm-started from the current estimate.
        x, iters = self._inverse_pass(rows, cc, tol * 0.1, max_iter, solver)
        residual = (self._chain(x, cc) - rows).abs().amax(-1)
        newton = self.dim <= cfg.exact_max_dim and cfg.potential.kind != "coupling"

        def polish(miss: Tensor) -> tuple[Tensor, int]:
            c_miss = None if cc is None else cc[miss]
            if newton:
                return self._newton_polish(x[miss], rows[miss], c_miss, min(3, max_iter)), 0
            return self._inverse_pass(
                rows[miss], c_miss, tol * 0.01, max_iter, solver, start=x[miss]
            )

        def measure(miss: Tensor, xr: Tensor) -> Tensor:
            c_miss = None if cc is None else cc[miss]
            return (self._chain(xr, c_miss) - rows[miss]).abs().amax(-1)

        iters = max(iters, refine_misses(x, residual, tol, 2, polish, measure))
        # the end-to-end residual is measured, so it decides: never flag a sample above tol
        residual = torch.where(torch.isfinite(residual), residual, torch.inf)
        info = InverseInfo(residual, residual <= tol, iters, tol)
        return self._out(x, was_image), info

    @torch.no_grad()
    def _inverse_pass(
        self,
        z: Tensor,
        cc: Tensor | None,
        tol: float,
        max_iter: int,
        solver: str,
        start: Tensor | None = None,
    ) -> tuple[Tensor, int]:
        """One pass through the layers, last to first; ``start`` (an estimate of x) gives each
        block's solve its starting point (where the estimate's forward pass puts its input).
        Returns x and the most iterations a block took (InverseInfo judges x end to end)."""
        layers = self._chain_layers()
        starts: list[Tensor | None] = [None] * len(layers)
        if start is not None:
            h = start
            for i, layer in enumerate(layers):
                starts[i] = h
                h = layer(h, layer.prepare(cc))
        solve = InverseSolve(tol, max_iter, solver, self.config.lbfgs_history)
        h, iters = z, 0
        for layer, x0 in zip(reversed(layers), reversed(starts), strict=True):
            h, layer_iters = layer.invert(h, layer.prepare(cc), solve, x0)
            iters = max(iters, layer_iters)
        return h, iters

    def _newton_polish(self, x: Tensor, z: Tensor, cc: Tensor | None, steps: int) -> Tensor:
        """Newton steps on the whole map in standardised coordinates: h <- h - J(h)^-1 (T(h) - z),
        J the product of the shape layers' linear maps and the blocks' Hessians (exact, in
        batch). Each sample keeps its best iterate, so a step that round-off spoils is never
        taken."""
        h = self.standardization(x)
        n, d = h.shape
        best_h, best_r = h, torch.full_like(z[:, 0], float("inf"))
        eye = torch.eye(d, dtype=h.dtype, device=h.device)
        for _ in range(steps + 1):
            y, J = h, eye.expand(n, -1, -1)
            for layer in self._layers():
                y, J = layer.forward_and_jacobian(y, layer.prepare(cc), J)
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
        context: Tensor | None = None,
        generator: torch.Generator | None = None,
        tol: float | None = None,
        max_iter: int | None = None,
        *,
        images: bool = False,
    ) -> tuple[Tensor, InverseInfo]:
        """n samples in data units (inverse of base draws; given one context row for all, or n
        rows, for a conditional flow) plus their InverseInfo; ``images=True`` returns image
        flows' samples as (n, C, H, W)."""
        if images and self.config.image_shape is None:
            raise ValueError("images=True is for image flows (config.image_shape)")
        gen_device = generator.device if generator is not None else self._ref.device
        z = torch.randn(n, self.dim, generator=generator, device=gen_device, dtype=self._ref.dtype)
        x, info = self.inverse(z.to(self._ref.device), context, tol=tol, max_iter=max_iter)
        return (self._out(x, True) if images else x), info
