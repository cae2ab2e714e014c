r"""Multiscale convolutional CP-Flow for images (paper §5.3, App. E.5).

    x (C, H, W) -> standardisation -> scale 1: [ActNorm -> block] x b_1 -> squeeze ->
    scale 2: [ActNorm -> block] x b_2 -> squeeze -> ... -> unsqueeze back -> N(0, I)

Blocks are convolutional CP-Flow blocks (:class:`cpflow.conv.ConvCPFlowBlock`), or, for the
ablation of Table 2, affine coupling blocks (``block_type="coupling"``). The squeeze of Dinh et
al. (2017) moves each 2x2 spatial patch into 4 channels; it is a permutation (log-det 0). No
dimensions are factored out: every block acts on the whole image, so the log-det is the sum of
the block log-dets. The base variable z is returned in the input layout (the squeezes are undone
at the end, a fixed permutation of i.i.d. normal coordinates), so transform/inverse keep shapes.

Every map accepts flat rows (n, C*H*W) or images (n, C, H, W) and returns the same layout.
Likelihoods reuse :mod:`cpflow.logdet` (SLQ, CG) and inversion reuses the core's per-block
batched L-BFGS (:func:`cpflow.flow.invert_block`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from .block import cholesky_logdet
from .config import PrecisionMixin
from .conv import ChannelActNorm, ConvCPFlowBlock, ConvICNN
from .flow import InverseInfo, invert_block, refine_misses
from .layers import Standardization
from .logdet import conjugate_gradient, rademacher, slq_logdet
from .stats import TrainStats, TrainStatsCollector

__all__ = [
    "PRESETS",
    "AffineCouplingBlock",
    "ImageFlowConfig",
    "MultiscaleCPFlow",
    "Squeeze",
    "as_flat_images",
    "build_flow",
    "coupling_parameter_match",
]

_LOG_2PI = math.log(2.0 * math.pi)

#: E.5 block counts per scale, with the image shape each was designed for.
PRESETS: dict[str, dict] = {
    "mnist": {"shape": (1, 28, 28), "blocks": [8, 8, 8], "hidden": 64, "depth": 4},
    "cifar": {"shape": (3, 32, 32), "blocks": [2, 2, 2, 2], "hidden": 64, "depth": 4},
    "digits": {"shape": (1, 8, 8), "blocks": [2, 2, 2], "hidden": 16, "depth": 4},
}


class ImageFlowConfig(PrecisionMixin, BaseModel):
    """Everything needed to rebuild a :class:`MultiscaleCPFlow` (JSON round trip).

    ``kind`` tells a model loader which flow class to build from a stored manifest.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["multiscale"] = "multiscale"
    input_shape: tuple[int, int, int] = Field(description="(channels, height, width)")
    blocks: list[int] = Field(description="blocks per scale; a squeeze between scales")
    hidden: int = Field(64, ge=1, le=1024, description="ICNN channels (or coupling channels)")
    depth: int = Field(4, ge=1, le=16, description="ICNN hidden layers")
    activation: Literal["logistic", "gaussian", "laplace"] = "logistic"
    symmetric_first: bool = True
    actnorm: bool = Field(True, description="channel ActNorm before every block")
    block_type: Literal["cpflow", "coupling"] = Field(
        "cpflow", description="coupling: the affine-coupling ablation (Table 2)"
    )
    coupling_hidden: int | None = Field(None, ge=1, description="coupling net channels")
    cg_atol: float = Field(1e-3, ge=0.0)
    cg_rtol: float = Field(0.0, ge=0.0)
    cg_max_iter: int | None = Field(None, ge=1)
    slq_steps: int = Field(20, ge=1, le=1024)
    slq_probes: int = Field(8, ge=1, le=4096)
    exact_max_dim: int = Field(64, ge=0, description="log_prob 'auto': exact up to this d")
    exact_chunk: int = Field(32, ge=1, description="rows per dense-Hessian batch")
    inverse_solver: Literal["lbfgs", "newton"] = "lbfgs"
    inverse_tol: float | None = Field(None, gt=0.0)
    inverse_max_iter: int = Field(1000, ge=1)
    lbfgs_history: int = Field(10, ge=1, le=100)
    dtype: Literal["float32", "float64"] = "float32"

    @model_validator(mode="after")
    def _check_scales(self) -> ImageFlowConfig:
        c, h, w = self.input_shape
        if min(c, h, w) < 1:
            raise ValueError("input_shape entries must be >= 1")
        if not self.blocks or min(self.blocks) < 1:
            raise ValueError("blocks needs at least one scale, each with >= 1 block")
        squeezes = len(self.blocks) - 1
        if h % (2**squeezes) or w % (2**squeezes):
            raise ValueError(
                f"height and width ({h}, {w}) must be divisible by 2^{squeezes} for "
                f"{len(self.blocks)} scales"
            )
        return self

    @property
    def dim(self) -> int:
        c, h, w = self.input_shape
        return c * h * w

    @classmethod
    def preset(cls, name: str, **overrides: object) -> ImageFlowConfig:
        """E.5 presets: ``mnist`` (8+8+8), ``cifar`` (2+2+2+2), and a small ``digits`` (8x8)."""
        if name not in PRESETS:
            raise ValueError(f"unknown image preset {name!r}; choose one of {sorted(PRESETS)}")
        p = PRESETS[name]
        base = {
            "input_shape": p["shape"],
            "blocks": list(p["blocks"]),
            "hidden": p["hidden"],
            "depth": p["depth"],
        }
        return cls(**{**base, **overrides})


class Squeeze(nn.Module):
    """(n, C, H, W) -> (n, 4C, H/2, W/2): each 2x2 patch becomes 4 channels (a permutation)."""

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        x = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(n, c * 4, h // 2, w // 2)

    def inverse(self, y: Tensor) -> Tensor:
        n, c4, h2, w2 = y.shape
        c = c4 // 4
        y = y.reshape(n, c, 2, 2, h2, w2).permute(0, 1, 4, 2, 5, 3)
        return y.reshape(n, c, h2 * 2, w2 * 2)


class AffineCouplingBlock(nn.Module):
    """Affine coupling (RealNVP) on images with a checkerboard mask of a given parity.

    y = m x + (1 - m) (x exp(s) + t), (s, t) = net(m x), s = tanh(.) * scale; the ablation that
    replaces each CP-Flow block in Table 2. Exact log-det sum((1 - m) s); exact inverse.
    """

    def __init__(self, shape: tuple[int, int, int], hidden: int, parity: int) -> None:
        super().__init__()
        c, h, w = shape
        self.shape, self.dim = tuple(shape), c * h * w
        ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        mask = ((ii + jj + parity) % 2).to(torch.float32).expand(c, h, w).reshape(1, c, h, w)
        self.register_buffer("mask", mask.clone())
        self.net = nn.Sequential(
            nn.Conv2d(c, hidden, 3, padding=1),
            nn.Softplus(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.Softplus(),
            nn.Conv2d(hidden, 2 * c, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.log_scale_scale = nn.Parameter(torch.zeros(1, c, 1, 1))

    def _st(self, xm: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self.net(xm).chunk(2, dim=1)
        s = torch.tanh(s) * torch.exp(self.log_scale_scale)
        inv = 1.0 - self.mask
        return s * inv, t * inv

    def forward_and_logdet(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._st(x * self.mask)
        return x * torch.exp(s) + t, s.sum((1, 2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_and_logdet(x)[0]

    def inverse(self, y: Tensor) -> Tensor:
        s, t = self._st(y * self.mask)
        return (y - t) * torch.exp(-s)


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


class MultiscaleCPFlow(nn.Module):
    """Multiscale CP-Flow over images with a standard normal base (see module docstring)."""

    def __init__(self, config: ImageFlowConfig) -> None:
        super().__init__()
        if not isinstance(config, ImageFlowConfig):
            config = ImageFlowConfig.model_validate(config)
        self.config = config
        self.input_shape = tuple(config.input_shape)
        self.dim = config.dim
        self.standardization = Standardization(self.dim)
        layers: list[nn.Module] = []
        c, h, w = self.input_shape
        parity = 0
        for scale, count in enumerate(config.blocks):
            if scale > 0:
                layers.append(Squeeze())
                c, h, w = c * 4, h // 2, w // 2
            for _ in range(count):
                if config.actnorm:
                    layers.append(ChannelActNorm(c, h, w))
                if config.block_type == "cpflow":
                    icnn = ConvICNN(
                        (c, h, w),
                        config.hidden,
                        config.depth,
                        config.activation,
                        symmetric_first=config.symmetric_first,
                    )
                    layers.append(ConvCPFlowBlock(icnn))
                else:
                    hid = config.coupling_hidden or config.hidden
                    layers.append(AffineCouplingBlock((c, h, w), hid, parity))
                    parity = 1 - parity
        self.layers = nn.ModuleList(layers)
        self.num_squeezes = len(config.blocks) - 1
        self.to(config.torch_dtype)

    # -- helpers --------------------------------------------------------------------------------
    @property
    def _ref(self) -> Tensor:
        return self.standardization.mean

    def _prepare(self, x: Tensor) -> tuple[Tensor, bool]:
        x = torch.as_tensor(x)
        flat, was_image = as_flat_images(x, self.input_shape)
        return flat.to(dtype=self._ref.dtype, device=self._ref.device), was_image

    def _to_img(self, rows: Tensor) -> Tensor:
        return rows.reshape(rows.shape[0], *self.input_shape)

    def _unsqueeze_all(self, h: Tensor) -> Tensor:
        for _ in range(self.num_squeezes):
            h = Squeeze().inverse(h)
        return h

    def _squeeze_all(self, h: Tensor) -> Tensor:
        for _ in range(self.num_squeezes):
            h = Squeeze()(h)
        return h

    def _out(self, rows_or_img: Tensor, was_image: bool) -> Tensor:
        n = rows_or_img.shape[0]
        return (
            rows_or_img.reshape(n, *self.input_shape) if was_image else rows_or_img.reshape(n, -1)
        )

    @staticmethod
    def _base_log_prob(z: Tensor) -> Tensor:
        z = z.reshape(z.shape[0], -1)
        return -0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * _LOG_2PI

    def cp_blocks(self) -> list[nn.Module]:
        return [m for m in self.layers if isinstance(m, ConvCPFlowBlock | AffineCouplingBlock)]

    def _const_logdet(self) -> Tensor:
        total = self.standardization.logdet()
        for layer in self.layers:
            if isinstance(layer, ChannelActNorm):
                total = total + layer.logdet()
        return total

    # -- set-up ---------------------------------------------------------------------------------
    def set_standardization(self, mean: Tensor | float, std: Tensor | float) -> None:
        """Fix the affine input layer (x - mean) / std; scalars apply to every pixel."""
        self.standardization.set(torch.as_tensor(mean), torch.as_tensor(std))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Data-dependent init of every ActNorm (outer and inside the ICNNs), layer by layer."""
        rows, _ = self._prepare(x)
        h = self._to_img(self.standardization(rows))
        for layer in self.layers:
            if isinstance(layer, ChannelActNorm):
                layer.initialize(h)
            elif isinstance(layer, ConvCPFlowBlock):
                layer.icnn.initialize(h)
            h = self._step(layer, h)

    @property
    def initialized(self) -> bool:
        flags = [b for name, b in self.named_buffers() if name.endswith("initialized")]
        return all(bool(f) for f in flags)

    @staticmethod
    def _step(layer: nn.Module, h: Tensor) -> Tensor:
        if isinstance(layer, ConvCPFlowBlock):
            return layer(h.reshape(h.shape[0], -1)).reshape(h.shape)
        return layer(h)

    # -- forward maps ---------------------------------------------------------------------------
    def transform(self, x: Tensor) -> Tensor:
        """x -> z (same layout as x), no autograd inside."""
        rows, was_image = self._prepare(x)
        h = self._to_img(self.standardization(rows))
        for layer in self.layers:
            h = self._step(layer, h)
        return self._out(self._unsqueeze_all(h), was_image)

    def forward(self, x: Tensor) -> Tensor:
        return self.transform(x)

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
        """log p(x) (n,) in the units of x. ``exact``: dense Hessians from d HVPs + Cholesky
        (fine for d = 64); ``slq``: stochastic Lanczos quadrature with a standard error;
        ``auto``: exact up to ``exact_max_dim``. Coupling flows are always exact."""
        cfg = self.config
        if method == "auto":
            method = "exact" if self.dim <= cfg.exact_max_dim else "slq"
        if method not in ("exact", "slq"):
            raise ValueError(f"unknown method {method!r}; use 'exact', 'slq' or 'auto'")
        rows, _ = self._prepare(x)
        if method == "exact" or cfg.block_type == "coupling":
            chunk = cfg.exact_chunk if cfg.block_type == "cpflow" else rows.shape[0] or 1
            parts = [self._exact(rows[i : i + chunk]) for i in range(0, rows.shape[0], chunk)]
            out = torch.cat(parts) if parts else rows.new_zeros(0)
            stderr = None if method == "exact" else torch.zeros_like(out)
            return (out, stderr) if return_stderr else out
        p = probes or cfg.slq_probes
        m = steps or cfg.slq_steps
        h = self._to_img(self.standardization(rows))
        n = h.shape[0]
        per_probe = h.new_zeros(p, n)
        for layer in self.layers:
            if isinstance(layer, ConvCPFlowBlock):
                y, hvp = layer.linearize(h.reshape(n, -1))
                v = rademacher(
                    (p, n, self.dim), dtype=h.dtype, device=h.device, generator=generator
                )
                per_probe = per_probe + slq_logdet(hvp, v, m)
                h = y.reshape(h.shape)
            else:
                h = layer(h)
        logdet = per_probe.mean(0)
        if p > 1:
            stderr = per_probe.std(0, unbiased=True) / math.sqrt(p)
        else:
            stderr = torch.full_like(logdet, float("nan"))
        out = self._base_log_prob(h) + logdet + self._const_logdet()
        return (out, stderr) if return_stderr else out

    def _exact(self, rows: Tensor) -> Tensor:
        h = self._to_img(self.standardization(rows))
        n = h.shape[0]
        logdet = h.new_zeros(n)
        for layer in self.layers:
            if isinstance(layer, ConvCPFlowBlock):
                y, H = layer.forward_and_hessian(h.reshape(n, -1))
                logdet = logdet + cholesky_logdet(H)
                h = y.reshape(h.shape)
            elif isinstance(layer, AffineCouplingBlock):
                h, ld = layer.forward_and_logdet(h)
                logdet = logdet + ld
            else:
                h = layer(h)
        return self._base_log_prob(h) + logdet + self._const_logdet()

    # -- training -------------------------------------------------------------------------------
    def training_loss(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, TrainStats]:
        """Surrogate loss (Algorithm 2): backward() gives an unbiased gradient of the mean NLL.

        WARNING: for CP-Flow blocks the VALUE IS NOT A NEGATIVE LOG-LIKELIHOOD (each log-det is
        replaced by z^T H v, z = CG(H, v) detached). Coupling flows return their exact mean NLL.
        """
        cfg = self.config
        rows, _ = self._prepare(x)
        h = self._to_img(self.standardization(rows))
        n = h.shape[0]
        surrogate = h.new_zeros(n)
        collector = TrainStatsCollector()
        for layer in self.layers:
            if isinstance(layer, AffineCouplingBlock):
                h, ld = layer.forward_and_logdet(h)
                surrogate = surrogate + ld
                continue
            if not isinstance(layer, ConvCPFlowBlock):
                h = layer(h)
                continue
            flat = h.reshape(n, -1)
            v = rademacher(tuple(flat.shape), dtype=h.dtype, device=h.device, generator=generator)
            y, hvp = layer.linearize(flat)
            Hv = hvp(v)
            with torch.no_grad():  # CG on the same linearisation, recording nothing
                cg = conjugate_gradient(
                    hvp, v, atol=cfg.cg_atol, rtol=cfg.cg_rtol, max_iter=cfg.cg_max_iter, hv0=Hv
                )
            surrogate = surrogate + (cg.solution * Hv).sum(-1)
            collector.add(cg, (v * Hv).sum(-1) / (v * v).sum(-1))
            h = y.reshape(h.shape)
        base = self._base_log_prob(h)
        loss = -(base + surrogate + self._const_logdet()).mean()
        return loss, collector.finish(base)

    # -- inverse and sampling -------------------------------------------------------------------
    @torch.no_grad()
    def inverse(
        self, z: Tensor, tol: float | None = None, max_iter: int | None = None
    ) -> tuple[Tensor, InverseInfo]:
        """x with transform(x) = z (same layout as z); CP-Flow blocks are inverted last to
        first by the core's batched L-BFGS, with the residual max|transform(x) - z| reported."""
        cfg = self.config
        tol = cfg.default_inverse_tol if tol is None else float(tol)
        max_iter = cfg.inverse_max_iter if max_iter is None else int(max_iter)
        rows, was_image = self._prepare(z)
        # Early-block errors are amplified by later blocks: blocks are solved to tol/10, and
        # the misses get passes at tol/100, each block warm-started from where the current
        # estimate's forward pass puts its input (so a pass refines rather than restarts).
        x, iters = self._inverse_pass(rows, tol * 0.1, max_iter)
        residual = (self.transform(x) - rows).abs().amax(-1)

        def solve(miss: Tensor) -> tuple[Tensor, int]:
            return self._inverse_pass(rows[miss], tol * 0.01, max_iter, start=x[miss])

        def measure(miss: Tensor, xr: Tensor) -> Tensor:
            return (self.transform(xr) - rows[miss]).abs().amax(-1)

        iters = max(iters, refine_misses(x, residual, tol, 2, solve, measure))
        residual = torch.where(torch.isfinite(residual), residual, torch.inf)
        # the end-to-end residual is measured, so it decides (as in CPFlow.inverse)
        return self._out(x, was_image), InverseInfo(residual, residual <= tol, iters, tol)

    @torch.no_grad()
    def _inverse_pass(
        self, rows: Tensor, tol: float, max_iter: int, start: Tensor | None = None
    ) -> tuple[Tensor, int]:
        """One pass through the layers, last to first; ``start`` (an estimate of x) gives each
        block's solve its starting point."""
        n = rows.shape[0]
        starts: dict[int, Tensor] = {}
        if start is not None:
            h = self._to_img(self.standardization(start))
            for i, layer in enumerate(self.layers):
                if isinstance(layer, ConvCPFlowBlock):
                    starts[i] = h.reshape(n, -1)
                h = self._step(layer, h)
        h = self._squeeze_all(self._to_img(rows))
        iters = 0
        for i in reversed(range(len(self.layers))):
            layer = self.layers[i]
            if isinstance(layer, ConvCPFlowBlock):
                res = invert_block(
                    layer,
                    h.reshape(n, -1),
                    tol=tol,
                    max_iter=max_iter,
                    solver=self.config.inverse_solver,
                    history=self.config.lbfgs_history,
                    x0=starts.get(i),
                )
                h = res.x.reshape(h.shape)
                iters = max(iters, int(res.iterations.max()) if n else 0)
            else:
                h = layer.inverse(h)
        return self.standardization.inverse(h.reshape(n, -1)), iters

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        tol: float | None = None,
        max_iter: int | None = None,
        *,
        images: bool = False,
    ) -> tuple[Tensor, InverseInfo]:
        """n samples (flat rows, or (n, C, H, W) with ``images=True``) and their InverseInfo."""
        gen_device = generator.device if generator is not None else self._ref.device
        z = torch.randn(n, self.dim, generator=generator, device=gen_device, dtype=self._ref.dtype)
        x, info = self.inverse(z.to(self._ref.device), tol=tol, max_iter=max_iter)
        return (self._to_img(x) if images else x), info


def coupling_parameter_match(config: ImageFlowConfig, target: int) -> ImageFlowConfig:
    """The coupling ablation of ``config`` whose parameter count is closest to ``target``."""
    best, best_gap = None, None
    for hid in range(4, 513):
        cand = config.model_copy(update={"block_type": "coupling", "coupling_hidden": hid})
        count = sum(p.numel() for p in MultiscaleCPFlow(cand).parameters())
        gap = abs(count - target)
        if best_gap is None or gap < best_gap:
            best, best_gap = cand, gap
        if count > target:
            break
    return best


def build_flow(flow_config: dict) -> nn.Module:
    """Registry for model loaders: a stored ``flow_config`` with ``kind: "multiscale"`` builds a
    :class:`MultiscaleCPFlow`; anything else is a tabular :class:`cpflow.CPFlow`."""
    if flow_config.get("kind") == "multiscale":
        return MultiscaleCPFlow(ImageFlowConfig.model_validate(flow_config))
    from .config import FlowConfig
    from .flow import CPFlow

    return CPFlow(FlowConfig.model_validate(flow_config))
