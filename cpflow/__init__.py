"""Convex Potential Flows: invertible maps as gradients of convex potentials."""

__version__ = "0.1.0"
