"""Experiment helpers for the ablations of the paper (not library code: they size models for a
comparison, they do not define one)."""

from __future__ import annotations

from cpflow import CPFlow, FlowConfig
from cpflow.config import CouplingBlocks

__all__ = ["coupling_parameter_match"]


def coupling_parameter_match(config: FlowConfig, target: int) -> FlowConfig:
    """The coupling ablation of an image ``config`` whose parameter count is closest to
    ``target`` (Table 2 compares the two at equal size)."""
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
