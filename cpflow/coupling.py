"""Affine coupling blocks on images: the ablation that replaces each CP-Flow block in Table 2."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layer import FlowLayer, InverseSolve, Prepared, SLQProbes, SurrogateProbes

__all__ = ["AffineCouplingBlock"]


class AffineCouplingBlock(FlowLayer):
    """Affine coupling (RealNVP) on images with a checkerboard mask of a given parity.

    y = m x + (1 - m) (x exp(s) + t), (s, t) = net(m x), s = tanh(.) * scale. Exact log-det
    sum((1 - m) s); exact inverse. Takes and returns flat rows (n, C*H*W) or images. Every
    log-det estimator of the chain gets the exact log-det from it (no estimator error).
    """

    is_block = True
    mask: Tensor

    def __init__(self, shape: tuple[int, int, int], hidden: int, parity: int) -> None:
        super().__init__()
        c, h, w = shape
        self.shape, self.dim = (c, h, w), c * h * w
        ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        mask = ((ii + jj + parity) % 2).to(torch.float32).expand(c, h, w).reshape(1, c, h, w)
        self.register_buffer("mask", mask.clone())
        first = nn.Conv2d(c, hidden, 3, padding=1)
        middle = nn.Conv2d(hidden, hidden, 3, padding=1)
        out = nn.Conv2d(hidden, 2 * c, 3, padding=1)
        for p in out.parameters():  # (s, t) = 0: the block starts as the identity
            nn.init.zeros_(p)
        self.net = nn.Sequential(first, nn.Softplus(), middle, nn.Softplus(), out)
        self.log_scale_scale = nn.Parameter(torch.zeros(1, c, 1, 1))

    def _st(self, xm: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self.net(xm).chunk(2, dim=1)
        s = torch.tanh(s) * torch.exp(self.log_scale_scale)
        inv = 1.0 - self.mask
        return s * inv, t * inv

    def forward_and_logdet(self, x: Tensor, w: Prepared | None = None) -> tuple[Tensor, Tensor]:
        img = x.reshape(x.shape[0], *self.shape)
        s, t = self._st(img * self.mask)
        return (img * torch.exp(s) + t).reshape(x.shape), s.sum((1, 2, 3))

    def forward(self, x: Tensor, w: Prepared | None = None) -> Tensor:
        return self.forward_and_logdet(x)[0]

    def inverse(self, y: Tensor) -> Tensor:
        img = y.reshape(y.shape[0], *self.shape)
        s, t = self._st(img * self.mask)
        return ((img - t) * torch.exp(-s)).reshape(y.shape)

    # -- the chain's layer interface (cpflow.layer.FlowLayer) ---------------------------------
    def prepare(self, context: Tensor | None) -> None:
        return None

    def constant_logdet(self) -> Tensor:
        return self.log_scale_scale.new_zeros(())

    def forward_and_slq(
        self, x: Tensor, w: Prepared | None, probes: SLQProbes
    ) -> tuple[Tensor, Tensor]:
        y, logdet = self.forward_and_logdet(x)
        return y, logdet.expand(probes.probes, -1)

    def forward_and_surrogate(
        self, x: Tensor, w: Prepared | None, probes: SurrogateProbes
    ) -> tuple[Tensor, Tensor]:
        return self.forward_and_logdet(x)

    def forward_and_jacobian(
        self, x: Tensor, w: Prepared | None, J: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The Jacobian (n, d, d) by forward-mode autograd, one row at a time (vmap)."""

        def one(row: Tensor) -> Tensor:
            return self.forward(row.unsqueeze(0)).squeeze(0)

        jac = torch.func.vmap(torch.func.jacfwd(one))(x)
        return self.forward(x), jac @ J

    def invert(
        self, y: Tensor, w: Prepared | None, solve: InverseSolve, x0: Tensor | None = None
    ) -> tuple[Tensor, int]:
        return self.inverse(y), 0

    def initialize(self, x: Tensor, context: Tensor | None = None) -> None:
        """Nothing to initialise from data: the block starts as the identity."""
