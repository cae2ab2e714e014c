"""The layers of a flow, built from its :class:`~cpflow.config.FlowConfig`: ActNorms and
blocks scale by scale, a squeeze between image scales, and the unsqueezes that bring z back to
the input's layout at the end. Every layer implements :class:`~cpflow.layer.FlowLayer`."""

from __future__ import annotations

from .block import ConvexPotential, CPFlowBlock
from .config import ConvPotential, CouplingBlocks, FlowConfig, ICNNPotential, PICNNPotential
from .conv import ChannelActNorm, ConvICNN
from .coupling import AffineCouplingBlock
from .icnn import ICNN
from .layer import FlowLayer
from .layers import ActNorm, Squeeze, Unsqueeze
from .picnn import PICNN
from .radial import RadialTerm

__all__ = ["build_layers"]


def _potential(
    cfg: FlowConfig,
    p: ICNNPotential | ConvPotential | PICNNPotential,
    shape: tuple[int, int, int] | None,
) -> ConvexPotential:
    """The convex network G of one block, as ``p`` (the config's potential) describes it."""
    if isinstance(p, ConvPotential):
        if shape is None:
            raise ValueError("a convolutional potential needs image_shape")
        return ConvICNN(shape, p.hidden, p.depth, p.activation, symmetric_first=p.symmetric_first)
    common = {"symmetric_first": p.symmetric_first, "zero_offset": p.zero_offset}
    if isinstance(p, PICNNPotential):
        return PICNN(
            cfg.dim, p.context_dim, p.hidden, p.depth, p.icnn, p.activation,
            context_hidden=p.context_hidden, cut_context=p.cut_context,
            actnorm=p.icnn_actnorm, **common,
        )  # fmt: skip
    return ICNN(cfg.dim, p.hidden, p.depth, p.icnn, p.activation, actnorm=p.icnn_actnorm, **common)


def _block(cfg: FlowConfig, shape: tuple[int, int, int] | None, parity: int) -> FlowLayer:
    """One block: a CP-Flow block over the config's potential, or an affine coupling block
    (checkerboard of ``parity``) for the coupling ablation."""
    p = cfg.potential
    if isinstance(p, CouplingBlocks):
        if shape is None:
            raise ValueError("coupling blocks need image_shape")
        return AffineCouplingBlock(shape, p.hidden, parity)
    radial_units = p.radial_units if isinstance(p, ICNNPotential) else 0
    radial = RadialTerm(cfg.dim, radial_units, p.activation) if radial_units else None
    return CPFlowBlock(_potential(cfg, p, shape), cfg.init_gain, radial)


def build_layers(cfg: FlowConfig) -> list[FlowLayer]:
    """The flow's layers in order (the standardisation before them is the flow's own)."""
    layers: list[FlowLayer] = []
    shape = cfg.image_shape
    squeezed: list[tuple[int, int, int]] = []
    for scale, count in enumerate(cfg.scales):
        if scale > 0 and shape is not None:
            layers.append(Squeeze(shape))
            squeezed.append(shape)
            c, h, w = shape
            shape = (4 * c, h // 2, w // 2)
        for i in range(count):
            if cfg.actnorm:
                layers.append(ActNorm(cfg.dim) if shape is None else ChannelActNorm(*shape))
            layers.append(_block(cfg, shape, (sum(cfg.scales[:scale]) + i) % 2))
    layers.extend(Unsqueeze(s) for s in reversed(squeezed))
    return layers
