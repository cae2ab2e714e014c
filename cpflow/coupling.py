"""Affine coupling blocks on images: the ablation that replaces each CP-Flow block in Table 2."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import CouplingBlocks, FlowConfig

__all__ = ["AffineCouplingBlock", "coupling_parameter_match"]


class AffineCouplingBlock(nn.Module):
    """Affine coupling (RealNVP) on images with a checkerboard mask of a given parity.

    y = m x + (1 - m) (x exp(s) + t), (s, t) = net(m x), s = tanh(.) * scale. Exact log-det
    sum((1 - m) s); exact inverse. Takes and returns flat rows (n, C*H*W) or images.
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
        img = x.reshape(x.shape[0], *self.shape)
        s, t = self._st(img * self.mask)
        return (img * torch.exp(s) + t).reshape(x.shape), s.sum((1, 2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_and_logdet(x)[0]

    def inverse(self, y: Tensor) -> Tensor:
        img = y.reshape(y.shape[0], *self.shape)
        s, t = self._st(img * self.mask)
        return ((img - t) * torch.exp(-s)).reshape(y.shape)


def coupling_parameter_match(config: FlowConfig, target: int) -> FlowConfig:
    """The coupling ablation of an image ``config`` whose parameter count is closest to
    ``target`` (Table 2 compares the two at equal size)."""
    from .flow import CPFlow

    best, best_gap = config, None
    base = config.model_dump(exclude={"potential"})
    for hidden in range(4, 513):
        cand = FlowConfig(**base, potential=CouplingBlocks(hidden=hidden))
        count = sum(p.numel() for p in CPFlow(cand).parameters())
        gap = abs(count - target)
        if best_gap is None or gap < best_gap:
            best, best_gap = cand, gap
        if count > target:
            break
    return best
