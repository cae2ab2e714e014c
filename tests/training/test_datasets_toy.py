"""Toy generators and their true densities: determinism, normalisation, agreement with samples.

The densities are the NLL floor that trained models are judged against to 0.05 nats, so they
are checked against independent references: the integral over a grid (must be 1), histograms
of many generator samples (the bin masses must match), a Gibbs-inequality check against a KDE,
the generating pre-image's change-of-variables density (pinwheel), quadrature refinement, and
closed-form entropy approximations.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import gaussian_kde

from training.datasets import DatasetError, load_dataset, toy
from training.datasets.toy import TOY_DATASETS, sample_toy, toy_log_density

# Grid spacing per data set for the integral / histogram checks. The midpoint rule on a uniform
# grid is spectrally accurate for smooth densities: its error is about exp(-2 pi^2 s^2 / h^2)
# for the narrowest feature width s: rings s = 0.08 at h = 1/16 gives 1e-14, two_spirals
# s = 0.1 at h = 1/8 gives 3e-6, the others (s >= 0.2) < 1e-20. Checkerboard is piecewise
# constant on cells that the grid lines up with, so it is exact.
_SPACING = {name: 0.125 for name in TOY_DATASETS} | {"rings": 0.0625}
_HALF_WIDTH = 5.0  # every set has mass < 1e-6 outside [-5, 5]^2


def _grid(h: float) -> tuple[np.ndarray, np.ndarray]:
    centres = np.arange(-_HALF_WIDTH + h / 2, _HALF_WIDTH, h)
    xx, yy = np.meshgrid(centres, centres, indexing="ij")
    return centres, np.stack([xx.ravel(), yy.ravel()], axis=1)


@pytest.fixture(scope="module")
def grid_densities() -> dict[str, tuple[float, np.ndarray]]:
    out = {}
    for name in TOY_DATASETS:
        h = _SPACING[name]
        centres, pts = _grid(h)
        dens = np.exp(toy_log_density(name, pts)).reshape(len(centres), len(centres))
        out[name] = (h, dens)
    return out


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_true_density_integrates_to_one(name, grid_densities) -> None:
    h, dens = grid_densities[name]
    integral = dens.sum() * h * h
    # The brief asks for 1 +- 0.01; the rule above is far more accurate, so hold it to 1e-4.
    assert abs(integral - 1.0) < 1e-4, integral


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_density_matches_histogram_of_samples(name, grid_densities) -> None:
    """Bin masses from the density agree with a histogram of 300k generator draws."""
    h, dens = grid_densities[name]
    block = round(0.5 / h)  # 0.5-wide bins made of block x block grid cells
    nb = dens.shape[0] // block
    d = dens[: nb * block, : nb * block]
    mass = d.reshape(nb, block, nb, block).sum(axis=(1, 3)) * h * h
    edges = -_HALF_WIDTH + np.arange(nb + 1) * block * h
    x = sample_toy(name, 300_000, seed=11, dtype=np.float64)
    counts, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=[edges, edges])
    tv = 0.5 * np.abs(counts / len(x) - mass).sum()
    # Sampling noise alone gives TV ~ 0.5 * sum sqrt(2 p / (pi n)) ~ 0.01 (measured 0.007-0.011);
    # a misplaced or misweighted component moves whole bins (eight_gaussians with a 10% wider
    # sigma: TV 0.065). Widths below the bin size are checked by the floor tests instead.
    assert tv < 0.02, tv


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_true_density_beats_a_kde_on_fresh_samples(name) -> None:
    """Gibbs: E_p[log p] >= E_p[log q] for any q; a KDE should come close but never win."""
    fit = sample_toy(name, 2000, seed=1, dtype=np.float64)
    fresh = sample_toy(name, 2000, seed=2, dtype=np.float64)
    kde = gaussian_kde(fit.T, bw_method=0.1)
    log_q = np.log(np.maximum(kde(fresh.T), 1e-300))
    log_p = toy_log_density(name, fresh)
    diff = log_p - log_q
    se = diff.std() / np.sqrt(len(diff))
    assert np.all(np.isfinite(log_p))
    assert diff.mean() > -3 * se, (diff.mean(), se)
    assert diff.mean() < 0.6  # the KDE is a reasonable density, so the gap is modest


def _grid_entropy(name: str, h: float = 0.025) -> float:
    _, pts = _grid(h)
    lp = toy_log_density(name, pts)
    return float(-(np.exp(lp) * lp).sum() * h * h)


def test_floors_match_closed_form_entropy_approximations() -> None:
    """The entropy (the floor) three ways: grid quadrature, Monte Carlo, independent formulas."""
    x = sample_toy("eight_gaussians", 200_000, seed=5, dtype=np.float64)
    lp = toy_log_density("eight_gaussians", x)
    mc, se = -lp.mean(), lp.std() / np.sqrt(len(lp))
    exact = _grid_entropy("eight_gaussians")
    assert abs(mc - exact) < 4 * se  # se ~ 0.0015
    sigma2 = (0.5 / 1.414) ** 2
    separated = np.log(8) + np.log(2 * np.pi * np.e * sigma2)  # an upper bound: overlap lowers it
    assert separated - 0.01 < exact < separated
    assert abs(exact - 2.825) < 0.02  # the 20,000-point estimate (its se ~ 0.007)

    x = sample_toy("rings", 200_000, seed=5, dtype=np.float64)
    lp = toy_log_density("rings", x)
    mc, se = -lp.mean(), lp.std() / np.sqrt(len(lp))
    exact = _grid_entropy("rings")
    assert abs(mc - exact) < 4 * se
    radii = 3 * np.array([1, 0.75, 0.5, 0.25])
    thin = (
        np.log(4) + np.mean(np.log(2 * np.pi * radii)) + 0.5 * np.log(2 * np.pi * np.e * 0.08**2)
    )
    assert abs(exact - thin) < 0.003  # curvature corrections are O(s^2 / r^2) ~ 1e-3
    assert abs(exact - 2.629) < 0.02  # the 20,000-point estimate

    x = sample_toy("checkerboard", 1000, seed=5, dtype=np.float64)
    assert np.allclose(toy_log_density("checkerboard", x), -np.log(32.0))


def test_pinwheel_density_equals_change_of_variables_at_the_generating_point() -> None:
    """Rebuild samples from known (arm, r, s), differentiate the map numerically, compare."""
    rng = np.random.default_rng(3)
    n = 300
    k = rng.integers(0, 5, n)
    r = 1 + 0.3 * rng.standard_normal(n)
    s = 0.1 * rng.standard_normal(n)

    def fwd(r, s):
        th = 2 * np.pi * k / 5 + 0.25 * np.exp(r)
        return 2 * np.stack([r * np.cos(th) + s * np.sin(th), -r * np.sin(th) + s * np.cos(th)], 1)

    eps = 1e-6
    jr = (fwd(r + eps, s) - fwd(r - eps, s)) / (2 * eps)
    js = (fwd(r, s + eps) - fwd(r, s - eps)) / (2 * eps)
    det = np.abs(jr[:, 0] * js[:, 1] - jr[:, 1] * js[:, 0])
    log_src = (
        -0.5 * ((r - 1) / 0.3) ** 2 - 0.5 * (s / 0.1) ** 2 - np.log(2 * np.pi * 0.3 * 0.1)
    ) - np.log(5)
    own = log_src - np.log(det)  # density from this pre-image alone
    got = toy_log_density("pinwheel", fwd(r, s))
    # other pre-images (other arms, other roots) can only add mass; typically they add none
    assert np.all(got >= own - 1e-6)
    assert np.median(np.abs(got - own)) < 1e-6


@pytest.mark.parametrize(
    "fn", [toy._logp_two_moons, toy._logp_swiss_roll, toy._logp_two_spirals], ids=str
)
def test_quadrature_is_converged(fn) -> None:
    """Refining the quadrature 2x changes log densities by < 1e-6 (stated accuracy ~1e-8)."""
    name = fn.__name__.removeprefix("_logp_")
    x = np.concatenate(
        [
            sample_toy(name, 400, seed=4, dtype=np.float64),
            np.random.default_rng(0).uniform(-4, 4, (200, 2)),
        ]
    )
    base = fn(x)
    fine = fn(x, refine=2)
    ok = fine > -30  # far tails: relative accuracy is what matters and it is the same
    assert np.max(np.abs(base - fine)[ok]) < 1e-6


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_sampler_is_seeded_and_shaped(name) -> None:
    a = sample_toy(name, 500, seed=7)
    b = sample_toy(name, 500, seed=7)
    c = sample_toy(name, 500, seed=8)
    assert a.shape == (500, 2) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    rng = np.random.default_rng(1)
    first, second = sample_toy(name, 100, rng=rng), sample_toy(name, 100, rng=rng)
    assert not np.array_equal(first, second)  # a generator gives a stream of fresh batches


def test_aliases_and_errors() -> None:
    assert np.array_equal(
        sample_toy("8gaussians", 10, seed=1), sample_toy("eight_gaussians", 10, seed=1)
    )
    assert np.array_equal(sample_toy("moons", 10), sample_toy("two_moons", 10))
    with pytest.raises(DatasetError, match="unknown toy data set"):
        sample_toy("nine_gaussians", 10)
    with pytest.raises(DatasetError, match=r"shape \(n, 2\)"):
        toy_log_density("rings", np.zeros((3, 3)))
    with pytest.raises(DatasetError, match="finite"):
        toy_log_density("rings", np.array([[np.nan, 0.0]]))
    with pytest.raises(DatasetError, match=">= 0"):
        sample_toy("rings", -1)
    assert toy_log_density("rings", np.zeros((0, 2))).shape == (0,)
    assert toy_log_density("checkerboard", np.array([[10.0, 10.0]]))[0] == -np.inf


def test_log_density_accepts_torch_tensors() -> None:
    torch = pytest.importorskip("torch")
    x = sample_toy("two_moons", 50, seed=2)
    got = toy_log_density("two_moons", torch.from_numpy(x))
    assert np.allclose(got, toy_log_density("two_moons", x))


def test_load_dataset_toy_splits_are_seeded_and_hashed() -> None:
    a = load_dataset("rings", num_samples=1000, seed=3)
    b = load_dataset("rings", num_samples=1000, seed=3)
    c = load_dataset("rings", num_samples=1000, seed=4)
    assert a.sizes == {"train": 700, "val": 150, "test": 150}
    assert a.train.dtype == np.float32 and a.dim == 2
    assert a.sha256 == b.sha256 and a.sha256 != c.sha256
    assert np.array_equal(a.test, b.test)
    assert a.meta["kind"] == "toy" and a.meta["true_density"] is True
    # the three splits are disjoint draws: no row of test appears in train
    assert not (a.test[:, None, :] == a.train[None, :, :]).all(axis=2).any()
    assert load_dataset("swissroll", num_samples=10).name == "swiss_roll"
    assert sum(load_dataset("pinwheel").sizes.values()) == 100_000
    with pytest.raises(DatasetError, match="at least 3"):
        load_dataset("rings", num_samples=2)
