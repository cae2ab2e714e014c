r"""Conditional CP-Flow p(x | c): every block is the gradient in x of a potential convex in x.

    F(x; c) = softplus(w0) |x|^2 / 2 + softplus(w1) G(x; c),   G a PICNN (convex in x for any c)

so each block map x -> grad_x F(x; c) is invertible for every context, with Jacobian the
x-Hessian (SPD, >= softplus(w0) I). The chain is: standardisation of x (and of c, fed to every
block) -> [ActNorm -> conditional block] x blocks -> N(0, I). ``log_prob`` is exact (Cholesky of
analytic Hessians) or SLQ; ``training_loss`` is the CG surrogate of Algorithm 2; ``inverse``
minimises F(x; c) - y^T x per sample. The machinery (CG, SLQ, Cholesky log-det, batched
L-BFGS) is the core library's; only the potential changes.

Contexts are (n, context_dim), or one row broadcast to all n inputs.
"""

from __future__ import annotations

import math

import torch
from pydantic import field_validator
from torch import Tensor, nn
from torch.nn import functional as F

from .block import BlockHVP, cholesky_logdet, gain_parameter
from .config import FlowConfig
from .flow import InverseInfo, refine_misses
from .inverse import minimize_batched
from .layers import ActNorm, Standardization, softplus_inv
from .logdet import CGResult, conjugate_gradient, rademacher, slq_logdet
from .picnn import PICNN, PICNNContext
from .stats import TrainStats, TrainStatsCollector

__all__ = [
    "ConditionalCPFlow",
    "ConditionalCPFlowBlock",
    "ConditionalFlowConfig",
    "ContextError",
    "check_context",
]

_LOG_2PI = math.log(2.0 * math.pi)


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


class ConditionalFlowConfig(FlowConfig):
    """A :class:`FlowConfig` plus the context: its dimension, the width of the context path and
    whether that path is cut after its first layer (App. E.6). ``icnn`` picks the PICNN kind
    (``augmented`` or ``vanilla``). JSON round trip; ``ConditionalCPFlow(cfg)`` rebuilds."""

    kind: str = "conditional"
    context_dim: int = 1
    context_hidden: int = 32
    cut_context: bool = True

    @field_validator("icnn")
    @classmethod
    def _picnn_kind(cls, v: str) -> str:
        if v not in ("augmented", "vanilla"):
            raise ValueError("a conditional flow's PICNN is 'augmented' or 'vanilla'")
        return v

    @field_validator("standardization")
    @classmethod
    def _per_coordinate(cls, v: str) -> str:
        if v == "whiten":
            raise ValueError("a conditional flow standardises per coordinate: use 'diagonal'")
        return v

    @field_validator("radial_units")
    @classmethod
    def _no_radial(cls, v: int) -> int:
        if v:
            raise ValueError("a conditional flow has no radial units: use 0")
        return v

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v != "conditional":
            raise ValueError("kind must be 'conditional'")
        return v

    @field_validator("context_dim", "context_hidden")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1 or v > 4096:
            raise ValueError("must be between 1 and 4096")
        return v


class ConditionalCPFlowBlock(nn.Module):
    """x -> grad_x F(x; c) with explicit Hessian, HVPs and the CG log-det surrogate."""

    def __init__(self, picnn: PICNN, init_gain: float | None = None) -> None:
        super().__init__()
        self.picnn = picnn
        self.dim = picnn.dim
        self.w0 = nn.Parameter(torch.tensor(softplus_inv(1.0)))
        self.w1 = gain_parameter(init_gain)

    def coefficients(self) -> tuple[Tensor, Tensor]:
        return F.softplus(self.w0), F.softplus(self.w1)

    def prepare(self, c: Tensor) -> PICNNContext:
        """Context-dependent weights, computed once per batch of contexts."""
        return self.picnn.prepare(c)

    def potential(self, x: Tensor, c: Tensor | PICNNContext) -> Tensor:
        a, b = self.coefficients()
        return 0.5 * a * (x * x).sum(-1) + b * self.picnn(x, c)

    def forward(self, x: Tensor, c: Tensor | PICNNContext) -> Tensor:
        a, b = self.coefficients()
        return a * x + b * self.picnn.grad(x, c)

    def value_and_grad(self, x: Tensor, c: Tensor | PICNNContext) -> tuple[Tensor, Tensor]:
        a, b = self.coefficients()
        gv, gg = self.picnn.value_and_grad(x, c)
        return 0.5 * a * (x * x).sum(-1) + b * gv, a * x + b * gg

    def forward_and_hessian(self, x: Tensor, c: Tensor | PICNNContext) -> tuple[Tensor, Tensor]:
        a, b = self.coefficients()
        g, Hg = self.picnn.grad_and_hessian(x, c)
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        return a * x + b * g, b * Hg + a * eye

    def forward_and_logdet(self, x: Tensor, c: Tensor | PICNNContext) -> tuple[Tensor, Tensor]:
        y, H = self.forward_and_hessian(x, c)
        return y, cholesky_logdet(H)

    def linearize(self, x: Tensor, c: Tensor | PICNNContext) -> tuple[Tensor, BlockHVP]:
        a, b = self.coefficients()
        g, lin = self.picnn.linearize(x, c)
        return a * x + b * g, BlockHVP(a, b, lin)

    def logdet_surrogate(
        self,
        x: Tensor,
        c: Tensor,
        v: Tensor,
        *,
        atol: float,
        rtol: float = 0.0,
        max_iter: int | None = None,
    ) -> tuple[Tensor, Tensor, CGResult, Tensor]:
        """(f(x; c), s, cg, rayleigh), s = stop_grad(H^-1 v)^T H v (Algorithm 2; see
        :meth:`cpflow.CPFlowBlock.logdet_surrogate`). Gradients flow into c as well."""
        y, op = self.linearize(x, c)
        hv = op(v)
        with torch.no_grad():  # CG on the same linearisation, recording nothing
            cg = conjugate_gradient(op, v, atol=atol, rtol=rtol, max_iter=max_iter, hv0=hv)
            rayleigh = (v * hv).sum(-1) / (v * v).sum(-1)
        return y, (cg.solution * hv).sum(-1), cg, rayleigh


class ConditionalCPFlow(nn.Module):
    """p(x | c) as a chain of ActNorms and conditional CP-Flow blocks (see module docstring)."""

    def __init__(self, config: ConditionalFlowConfig) -> None:
        super().__init__()
        if not isinstance(config, ConditionalFlowConfig):
            config = ConditionalFlowConfig.model_validate(
                config.model_dump() if isinstance(config, FlowConfig) else config
            )
        self.config = config
        self.dim = config.dim
        self.context_dim = config.context_dim
        self.standardization = Standardization(config.dim)
        self.context_standardization = Standardization(config.context_dim)
        layers: list[nn.Module] = []
        for _ in range(config.blocks):
            if config.actnorm:
                layers.append(ActNorm(config.dim))
            picnn = PICNN(
                config.dim,
                config.context_dim,
                config.hidden,
                config.depth,
                config.icnn,
                config.activation,
                context_hidden=config.context_hidden,
                cut_context=config.cut_context,
                symmetric_first=config.symmetric_first,
                zero_offset=config.zero_offset,
                actnorm=config.icnn_actnorm,
            )
            layers.append(ConditionalCPFlowBlock(picnn, init_gain=config.init_gain))
        self.layers = nn.ModuleList(layers)
        self.to(config.torch_dtype)

    # -- helpers ------------------------------------------------------------------------------
    @property
    def _ref(self) -> Tensor:
        return self.standardization.mean

    def blocks(self) -> list[ConditionalCPFlowBlock]:
        return [m for m in self.layers if isinstance(m, ConditionalCPFlowBlock)]

    def _as_input(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected inputs of shape (n, {self.dim}), got {tuple(x.shape)}")
        return x.to(dtype=self._ref.dtype, device=self._ref.device)

    def _as_context(self, c: Tensor, n: int) -> Tensor:
        """Standardised contexts (n, context_dim); a single row is broadcast to n rows."""
        c = torch.as_tensor(c).to(dtype=self._ref.dtype, device=self._ref.device)
        if c.ndim == 1 and c.shape[0] == self.context_dim:
            c = c.unsqueeze(0)
        if c.ndim != 2 or c.shape[1] != self.context_dim or c.shape[0] not in (1, n):
            raise ValueError(
                f"expected context of shape ({n}, {self.context_dim}) or (1, {self.context_dim}),"
                f" got {tuple(c.shape)}"
            )
        if not bool(torch.isfinite(c).all()):
            raise ValueError("context must be finite")
        return self.context_standardization(c).expand(n, self.context_dim)

    @staticmethod
    def _base_log_prob(z: Tensor) -> Tensor:
        return -0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * _LOG_2PI

    def _const_logdet(self) -> Tensor:
        total = self.standardization.logdet()
        for layer in self.layers:
            if isinstance(layer, ActNorm):
                total = total + layer.logdet()
        return total

    # -- set-up -------------------------------------------------------------------------------
    def set_standardization(
        self,
        mean: Tensor,
        std: Tensor,
        context_mean: Tensor | None = None,
        context_std: Tensor | None = None,
    ) -> None:
        """Fix the affine layers for x (with its log-det) and for c (buffers, saved)."""
        self.standardization.set(mean, std, isotropic=self.config.standardization == "isotropic")
        if context_mean is not None or context_std is not None:
            cm = torch.zeros(self.context_dim) if context_mean is None else context_mean
            cs = torch.ones(self.context_dim) if context_std is None else context_std
            self.context_standardization.set(cm, cs)

    @torch.no_grad()
    def initialize(self, x: Tensor, c: Tensor) -> None:
        """Data-dependent ActNorm initialisation on raw (x, c), layer by layer."""
        h = self.standardization(self._as_input(x))
        cc = self._as_context(c, h.shape[0])
        for layer in self.layers:
            if isinstance(layer, ActNorm):
                layer.initialize(h)
                h = layer(h)
            else:
                layer.picnn.initialize(h, cc)
                h = layer(h, cc)

    @property
    def initialized(self) -> bool:
        flags = [b for name, b in self.named_buffers() if name.endswith("initialized")]
        return all(bool(f) for f in flags)

    # -- forward maps ---------------------------------------------------------------------------
    def transform(self, x: Tensor, c: Tensor) -> Tensor:
        """Forward map x -> z given c (no autograd inside)."""
        h = self.standardization(self._as_input(x))
        return self._chain(h, self._as_context(c, h.shape[0]))

    def _chain(self, h: Tensor, cc: Tensor) -> Tensor:
        for layer in self.layers:
            h = layer(h) if isinstance(layer, ActNorm) else layer(h, cc)
        return h

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return self.transform(x, c)

    def transform_and_logdet(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """(z, log|det dz/dx|) with exact Cholesky log-dets; differentiable in the parameters,
        x and c (useful as a flow layer, e.g. an amortised posterior)."""
        h = self.standardization(self._as_input(x))
        cc = self._as_context(c, h.shape[0])
        logdet = torch.zeros(h.shape[0], dtype=h.dtype, device=h.device)
        for layer in self.layers:
            if isinstance(layer, ActNorm):
                h = layer(h)
            else:
                h, ld = layer.forward_and_logdet(h, cc)
                logdet = logdet + ld
        return h, logdet + self._const_logdet()

    def log_prob(
        self,
        x: Tensor,
        c: Tensor,
        method: str = "exact",
        *,
        probes: int | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        return_stderr: bool = False,
    ):
        """log p(x | c) (n,) of raw inputs; ``exact`` | ``slq`` | ``auto`` as in CPFlow."""
        if method == "auto":
            method = "exact" if self.dim <= self.config.exact_max_dim else "slq"
        if method not in ("exact", "slq"):
            raise ValueError(f"unknown method {method!r}; use 'exact', 'slq' or 'auto'")
        stderr = None
        if method == "exact":
            z, logdet = self.transform_and_logdet(x, c)
            out = self._base_log_prob(z) + logdet
            return (out, stderr) if return_stderr else out
        h = self.standardization(self._as_input(x))
        cc = self._as_context(c, h.shape[0])
        p = probes or self.config.slq_probes
        m = steps or self.config.slq_steps
        per_probe = torch.zeros(p, h.shape[0], dtype=h.dtype, device=h.device)
        for layer in self.layers:
            if isinstance(layer, ActNorm):
                h = layer(h)
                continue
            y, hvp = layer.linearize(h, cc)
            v = rademacher((p, *h.shape), dtype=h.dtype, device=h.device, generator=generator)
            per_probe = per_probe + slq_logdet(hvp, v, m)
            h = y
        logdet = per_probe.mean(0)
        if p > 1:
            stderr = per_probe.std(0, unbiased=True) / math.sqrt(p)
        else:
            stderr = torch.full_like(logdet, float("nan"))
        out = self._base_log_prob(h) + logdet + self._const_logdet()
        return (out, stderr) if return_stderr else out

    # -- training -------------------------------------------------------------------------------
    def training_loss(
        self, x: Tensor, c: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, TrainStats]:
        """CG surrogate (Algorithm 2): backward() gives an unbiased gradient of the mean
        NLL -log p(x | c). The VALUE IS NOT AN NLL; use :meth:`log_prob` to report one."""
        cfg = self.config
        h = self.standardization(self._as_input(x))
        cc = self._as_context(c, h.shape[0])
        surrogate = torch.zeros(h.shape[0], dtype=h.dtype, device=h.device)
        collector = TrainStatsCollector()
        for layer in self.layers:
            if isinstance(layer, ActNorm):
                h = layer(h)
                continue
            v = rademacher(tuple(h.shape), dtype=h.dtype, device=h.device, generator=generator)
            y, surr, cg, rq = layer.logdet_surrogate(
                h, cc, v, atol=cfg.cg_atol, rtol=cfg.cg_rtol, max_iter=cfg.cg_max_iter
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
        c: Tensor,
        tol: float | None = None,
        max_iter: int | None = None,
        *,
        solver: str | None = None,
    ) -> tuple[Tensor, InverseInfo]:
        """x with transform(x, c) = z: blocks inverted last to first by batched L-BFGS (or
        Newton), each sample with its own context; InverseInfo says how exact each x is."""
        cfg = self.config
        tol = cfg.default_inverse_tol if tol is None else float(tol)
        max_iter = cfg.inverse_max_iter if max_iter is None else int(max_iter)
        solver = solver or cfg.inverse_solver
        z = self._as_input(z)
        cc = self._as_context(c, z.shape[0])
        # errors of early blocks grow through later ones: blocks are solved to tol/10, and the
        # misses get up to two passes at tol/100, warm-started from the current estimate
        x, iters = self._inverse_pass(z, cc, tol * 0.1, max_iter, solver)
        residual = (self._chain(self.standardization(x), cc) - z).abs().amax(-1)

        def solve(miss: Tensor) -> tuple[Tensor, int]:
            return self._inverse_pass(
                z[miss], cc[miss], tol * 0.01, max_iter, solver, start=x[miss]
            )

        def measure(miss: Tensor, xr: Tensor) -> Tensor:
            return (self._chain(self.standardization(xr), cc[miss]) - z[miss]).abs().amax(-1)

        iters = max(iters, refine_misses(x, residual, tol, 2, solve, measure))
        # the end-to-end residual is measured, so it decides (as in CPFlow.inverse)
        converged = (residual <= tol) & torch.isfinite(residual)
        return x, InverseInfo(residual, converged, iters, tol)

    @torch.no_grad()
    def _inverse_pass(
        self,
        z: Tensor,
        cc: Tensor,
        tol: float,
        max_iter: int,
        solver: str,
        start: Tensor | None = None,
    ) -> tuple[Tensor, int]:
        """One pass through the layers, last to first; ``start`` (an estimate of x) gives each
        block's solve its starting point."""
        starts: dict[int, Tensor] = {}
        if start is not None:
            h = self.standardization(start)
            for i, layer in enumerate(self.layers):
                if isinstance(layer, ActNorm):
                    h = layer(h)
                else:
                    starts[i] = h
                    h = layer(h, cc)
        h = z
        iters = 0
        for i in reversed(range(len(self.layers))):
            layer = self.layers[i]
            if isinstance(layer, ActNorm):
                h = layer.inverse(h)
                continue
            w = layer.prepare(cc)
            y = h

            def fg(x: Tensor, idx: Tensor, layer=layer, w=w, y=y) -> tuple[Tensor, Tensor]:
                val, grad = layer.value_and_grad(x, w.select(idx))
                yi = y[idx]
                return val - (yi * x).sum(-1), grad - yi

            def hess(x: Tensor, idx: Tensor, layer=layer, w=w) -> Tensor:
                return layer.forward_and_hessian(x, w.select(idx))[1]

            res = minimize_batched(
                fg,
                starts[i] if i in starts else y / layer.coefficients()[0],
                tol=tol,
                max_iter=max_iter,
                history=self.config.lbfgs_history,
                method=solver,
                hessian=hess,
            )
            h = res.x
            iters = max(iters, int(res.iterations.max()) if res.iterations.numel() else 0)
        return self.standardization.inverse(h), iters

    @torch.no_grad()
    def sample(
        self,
        c: Tensor,
        n: int | None = None,
        generator: torch.Generator | None = None,
        tol: float | None = None,
        max_iter: int | None = None,
    ) -> tuple[Tensor, InverseInfo]:
        """Samples x ~ p(x | c): one per context row, or n for a single context row."""
        c = torch.as_tensor(c)
        rows = c.reshape(-1, self.context_dim).shape[0] if c.ndim <= 2 else -1
        if n is None:
            n = rows
        elif rows not in (1, n):
            raise ValueError("give one context row, or n rows for n samples")
        gen_device = generator.device if generator is not None else self._ref.device
        z = torch.randn(n, self.dim, generator=generator, device=gen_device, dtype=self._ref.dtype)
        return self.inverse(z.to(self._ref.device), c, tol=tol, max_iter=max_iter)
