"""Definition 1 of the paper for every activation: convex, >= ReLU, -> ReLU at +-infinity;
closed-form derivatives checked against autograd."""

from __future__ import annotations

import pytest
import torch

from cpflow.activations import ACTIVATIONS, Activation

GRID = torch.linspace(-30.0, 30.0, 6001, dtype=torch.float64)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_definition_1(name):
    s, d1, d2 = Activation(name).all(GRID)
    relu = GRID.clamp_min(0)
    assert (s >= relu - 1e-15).all()  # >= ReLU
    assert (d2 >= 0).all()  # convex (closed-form second derivative)
    # convex by finite differences too (independent of d2): second differences >= 0
    assert ((s[2:] - 2 * s[1:-1] + s[:-2]) >= -1e-12).all()
    assert ((d1 >= 0) & (d1 <= 1)).all()  # non-decreasing, 1-Lipschitz
    # approaches ReLU at both ends: gap at |u| = 30 below 1e-12 (tails decay like e^-|u|)
    assert (s - relu)[0] < 1e-12 and (s - relu)[-1] < 1e-12
    # gap decreases monotonically away from the origin
    gap = s - relu
    right, left = gap[GRID >= 0], gap[GRID <= 0]
    assert (right[1:] <= right[:-1] + 1e-14).all() and (left[1:] >= left[:-1] - 1e-14).all()


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("zero_offset", [False, True])
def test_derivatives_match_autograd(name, symmetric, zero_offset):
    act = Activation(name, symmetric=symmetric, zero_offset=zero_offset)
    u = torch.linspace(-6, 6, 241, dtype=torch.float64).requires_grad_(True)
    s, d1, d2 = act.all(u)
    (g,) = torch.autograd.grad(s.sum(), u, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), u)
    torch.testing.assert_close(d1, g, atol=1e-12, rtol=0)
    torch.testing.assert_close(d2, h, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_symmetrised_is_even_and_zero_offset_vanishes_at_zero(name):
    sym = Activation(name, symmetric=True)
    torch.testing.assert_close(sym(GRID), sym(-GRID), atol=1e-12, rtol=0)
    assert (
        abs(float(Activation(name, zero_offset=True)(torch.zeros(1, dtype=torch.float64)))) < 1e-15
    )


def test_unknown_activation_raises():
    with pytest.raises(ValueError):
        Activation("relu")
