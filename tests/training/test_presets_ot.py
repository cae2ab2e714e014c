"""The Gaussian OT experiment's closed forms, checked against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from training.ot import make_problem, make_splits, parse_ot_dataset, transport_cost


@pytest.mark.parametrize("dim", [2, 5])
def test_optimal_map_pushes_to_the_base_and_attains_w2(dim) -> None:
    problem = make_problem(dim, seed=3)
    rng = np.random.default_rng(0)
    x = problem.sample(200_000, rng)
    z = problem.optimal_map(x)
    # T pushes N(m, S) to N(0, I): sample moments within Monte Carlo error (n=2e5).
    assert np.abs(z.mean(0)).max() < 0.02
    assert np.abs(np.cov(z, rowvar=False) - np.eye(dim)).max() < 0.03
    # Its cost is the closed-form W2^2 (relative MC error ~1%).
    cost = np.mean(((x - z) ** 2).sum(1))
    assert cost == pytest.approx(problem.w2_squared, rel=0.02)
    # The lower-triangular (Cholesky) map also pushes to N(0, I) but costs more: this is the
    # gap Fig. 4 shows for a linear IAF.
    chol = np.linalg.cholesky(problem.cov)
    z_tri = np.linalg.solve(chol, (x - problem.mean).T).T
    assert np.mean(((x - z_tri) ** 2).sum(1)) > cost + 1e-3


def test_log_density_matches_scipy() -> None:
    problem = make_problem(4, seed=1)
    x = problem.sample(50, np.random.default_rng(2))
    ref = multivariate_normal(problem.mean, problem.cov).logpdf(x)
    np.testing.assert_allclose(problem.log_density(x), ref, rtol=0, atol=1e-10)


def test_splits_and_names() -> None:
    splits, _ = make_splits(3, num_samples=1000, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (800, 100, 100)
    assert splits.name == "wishart_gaussian:3" and len(splits.sha256) == 64
    again, _ = make_splits(3, num_samples=1000, seed=0)
    assert again.sha256 == splits.sha256  # seeded: same data, same identity
    assert parse_ot_dataset("wishart_gaussian:16") == 16
    assert parse_ot_dataset("eight_gaussians") is None
    with pytest.raises(ValueError, match="dimension"):
        parse_ot_dataset("wishart_gaussian:x")
    assert transport_cost(lambda t: t + 1.0, np.zeros((10, 3))) == pytest.approx(3.0)
    assert torch.is_tensor(torch.as_tensor(splits.train))
