"""Convex Potential Flows: invertible maps as gradients of convex potentials.

One flow type, :class:`CPFlow`, for tabular data, images and conditional densities p(x | c);
the blocks' convex potential is chosen by :class:`FlowConfig` (``potential.kind``). Every layer
of a flow's chain implements :class:`FlowLayer` (:mod:`cpflow.layer`).
"""

__version__ = "0.1.0"

from .block import CPFlowBlock
from .config import ConvPotential, CouplingBlocks, FlowConfig, ICNNPotential, PICNNPotential
from .context import ContextError, check_context
from .flow import CPFlow, InverseInfo, TrainStats
from .icnn import ICNN
from .layer import FlowLayer
from .radial import RadialTerm

__all__ = [
    "ICNN",
    "CPFlow",
    "CPFlowBlock",
    "ContextError",
    "ConvPotential",
    "CouplingBlocks",
    "FlowConfig",
    "FlowLayer",
    "ICNNPotential",
    "InverseInfo",
    "PICNNPotential",
    "RadialTerm",
    "TrainStats",
    "__version__",
    "check_context",
]
