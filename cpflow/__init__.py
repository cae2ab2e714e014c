"""Convex Potential Flows: invertible maps as gradients of convex potentials."""

__version__ = "0.1.0"

from .block import CPFlowBlock
from .config import FlowConfig
from .flow import CPFlow, InverseInfo, TrainStats
from .icnn import ICNN
from .radial import RadialTerm

__all__ = [
    "ICNN",
    "CPFlow",
    "CPFlowBlock",
    "FlowConfig",
    "InverseInfo",
    "RadialTerm",
    "TrainStats",
    "__version__",
]
