r"""Toy 2-D data sets of FFJORD / CP-Flow, with seeded samplers and their TRUE log densities.

The generators keep the shapes, scales and noise levels of FFJORD's ``toy_data.py`` (which the
CP-Flow code reuses), re-implemented here. Where FFJORD places points on a deterministic grid of
angles (``rings``, ``two_moons``) or draws a fixed number per component, we draw the angle / the
component at random: the same distribution, without stratification, so that the density below is
the exact density of what the sampler draws.

``toy_log_density(name, x)`` is the density that the sampler draws from, used as the NLL floor:

=================  ==========================================================  =================
data set           definition (final units)                                    true density
=================  ==========================================================  =================
eight_gaussians    8 equal N(c_k, (0.5/1.414)^2 I), |c_k| = 4/1.414, 45 deg    closed form
rings              4 equal rings, radii 3, 2.25, 1.5, 0.75, uniform angle,     closed form
                   + N(0, 0.08^2 I)                                            (Bessel I0)
checkerboard       uniform on 8 squares of side 2 in [-4, 4]^2                 closed form
two_moons          sklearn moons (noise 0.1) * 2 + (-1, -0.2): two semicircles quadrature
                   of radius 2, uniform angle, + N(0, 0.2^2 I)                 (1-D, exact)
swiss_roll         (t cos t, t sin t) / 5, t ~ U[1.5 pi, 4.5 pi], + N(0, 0.2^2 I) quadrature
two_spirals        +-((-n cos n, n sin n) + U[0, .5]^2) / 3 + N(0, 0.1^2 I),   quadrature
                   n = 3 pi sqrt(U)                                            (box x Gauss exact)
pinwheel           5 arms: (r, s) ~ N(1, .3^2) x N(0, .1^2), rotated by        change of
                   -(2 pi k / 5 + 0.25 e^r), times 2                           variables, roots
=================  ==========================================================  =================

Accuracy (``tests/training/test_datasets_toy.py``; ``python -m bench run toy_density_accuracy`` prints the
figures): every density integrates to 1 within 2e-9 on a grid. The closed forms are exact to
float64 rounding. The quadratures (composite Gauss-Legendre over the curve parameter; for the
spirals the uniform box is convolved with the Gaussian in closed form) change by < 4e-9 in log
density when refined 4x. The pinwheel density sums the exact change-of-variables term over all
pre-images found by root bracketing within |s| <= 10 tangential sds (farther pre-images add less
than e^-50); only near-tangent root pairs (caustics, at |s| > 4 e^-r) could be missed, whose
probability mass we estimate below 1e-6 (its grid integral is 1 + 6e-10 at spacing 0.025). All of this is many orders below the 0.05 nats used to judge
trained models; the floor's own uncertainty is the Monte Carlo error of the sample mean
(about 0.005-0.007 nats for 20,000 points). The exact floors (entropies, by grid quadrature):
eight_gaussians 2.8319, two_moons 2.3939, rings 2.6232, pinwheel 2.3178, two_spirals 2.6455,
checkerboard log 32 = 3.4657, swiss_roll 2.6696 nats.

Where the density underflows float64 (or is zero: outside the checkerboard's squares, or
pinwheel points whose every pre-image lies beyond 10 tangential sds, i.e. log p < ~-50), the log
density is -inf.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.special import i0e, logsumexp, ndtr

from .errors import DatasetError

__all__ = [
    "TOY_ALIASES",
    "TOY_DATASETS",
    "canonical_toy_name",
    "sample_toy",
    "toy_log_density",
]

TOY_DATASETS: tuple[str, ...] = (
    "eight_gaussians",
    "two_moons",
    "rings",
    "pinwheel",
    "two_spirals",
    "checkerboard",
    "swiss_roll",
)

# FFJORD's own spellings, accepted so that its configs can be pasted as they are.
TOY_ALIASES: dict[str, str] = {
    "8gaussians": "eight_gaussians",
    "moons": "two_moons",
    "2spirals": "two_spirals",
    "swissroll": "swiss_roll",
}

_LOG_2PI = float(np.log(2.0 * np.pi))


def canonical_toy_name(name: str) -> str | None:
    """The canonical toy name for ``name`` (or an FFJORD alias), or None if it is not a toy set."""
    key = name.strip().lower()
    key = TOY_ALIASES.get(key, key)
    return key if key in TOY_DATASETS else None


def _require(name: str) -> str:
    key = canonical_toy_name(name)
    if key is None:
        raise DatasetError(
            f"unknown toy data set {name!r}; choose one of {', '.join(TOY_DATASETS)}"
        )
    return key


# --------------------------------------------------------------------------- quadrature helpers


@lru_cache(maxsize=64)
def _gauss_legendre(a: float, b: float, panels: int, order: int = 8) -> tuple[np.ndarray, ...]:
    """Composite Gauss-Legendre nodes and weights on [a, b] (weights sum to b - a)."""
    return _gauss_legendre_edges(np.linspace(a, b, panels + 1), order)


def _gauss_legendre_edges(edges: np.ndarray, order: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre rule of ``order`` nodes on each panel [edges[i], edges[i + 1]]."""
    x, w = np.polynomial.legendre.leggauss(order)
    half = 0.5 * np.diff(edges)
    mid = 0.5 * (edges[:-1] + edges[1:])
    nodes = (mid[:, None] + half[:, None] * x[None, :]).ravel()
    weights = (half[:, None] * w[None, :]).ravel()
    nodes.setflags(write=False)
    weights.setflags(write=False)
    return nodes, weights


def _chunks(n: int, per_row: int, budget: int = 2_000_000):
    """Row slices of at most ``budget`` // ``per_row`` rows, to bound temporary arrays."""
    step = max(1, budget // max(1, per_row))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _gaussian_curve_log_density(
    x: np.ndarray, centres: np.ndarray, log_weights: np.ndarray, sigma: float
) -> np.ndarray:
    """log sum_j exp(log_weights_j) N(x; centres_j, sigma^2 I), for 2-D x (chunked).

    Uses |x - c|^2 = |x|^2 - 2 x.c + |c|^2 so the (points x centres) work is one product per
    coordinate; the rounding this adds (~1e-14 absolute in |x - c|^2) is far below sigma^2.
    """
    inv = 1.0 / sigma**2
    bias = log_weights - 0.5 * inv * np.einsum("ij,ij->i", centres, centres)
    scaled = (centres * inv).T.copy()
    const = -_LOG_2PI - 2.0 * np.log(sigma)
    out = np.empty(x.shape[0])
    for sl in _chunks(x.shape[0], centres.shape[0]):
        xs = x[sl]
        # explicit 2-term products: BLAS is slow for an inner dimension of 2
        a = xs[:, 0, None] * scaled[0] + xs[:, 1, None] * scaled[1] + bias
        peak = a.max(axis=1, keepdims=True)
        total = np.exp(a - peak).sum(axis=1)
        out[sl] = peak[:, 0] + np.log(total) - 0.5 * inv * np.einsum("ij,ij->i", xs, xs)
    return out + const


# --------------------------------------------------------------------------- eight gaussians

_EG_RADIUS = 4.0 / 1.414  # FFJORD: centres at scale 4, then the whole set divided by 1.414
_EG_SIGMA = 0.5 / 1.414


def _eg_centres() -> np.ndarray:
    angles = np.arange(8) * (np.pi / 4.0)
    return _EG_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _sample_eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
    k = rng.integers(0, 8, size=n)
    return _eg_centres()[k] + _EG_SIGMA * rng.standard_normal((n, 2))


def _logp_eight_gaussians(x: np.ndarray) -> np.ndarray:
    return _gaussian_curve_log_density(x, _eg_centres(), np.full(8, -np.log(8.0)), _EG_SIGMA)


# --------------------------------------------------------------------------- rings

_RING_RADII = 3.0 * np.array([1.0, 0.75, 0.5, 0.25])
_RING_SIGMA = 0.08


def _sample_rings(rng: np.random.Generator, n: int) -> np.ndarray:
    radius = _RING_RADII[rng.integers(0, 4, size=n)]
    angle = rng.uniform(0.0, 2.0 * np.pi, size=n)
    pts = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return pts + _RING_SIGMA * rng.standard_normal((n, 2))


def _logp_rings(x: np.ndarray) -> np.ndarray:
    # A uniform circle of radius R blurred by N(0, s^2 I) has density
    # exp(-(rho - R)^2 / 2s^2) * i0e(rho R / s^2) / (2 pi s^2): the angular integral is I0.
    rho = np.linalg.norm(x, axis=1)[:, None]
    s2 = _RING_SIGMA**2
    radii = _RING_RADII[None, :]
    with np.errstate(divide="ignore"):
        terms = -((rho - radii) ** 2) / (2.0 * s2) + np.log(i0e(rho * radii / s2))
    return logsumexp(terms, axis=1) - np.log(4.0) - _LOG_2PI - np.log(s2)


# --------------------------------------------------------------------------- checkerboard


def _sample_checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    x1 = rng.uniform(-2.0, 2.0, size=n)
    x2 = rng.uniform(0.0, 1.0, size=n) - 2.0 * rng.integers(0, 2, size=n)
    x2 = x2 + np.mod(np.floor(x1), 2.0)
    return 2.0 * np.stack([x1, x2], axis=1)


def _logp_checkerboard(x: np.ndarray) -> np.ndarray:
    u = x / 2.0
    i = np.floor(u[:, 0])
    j = np.floor(u[:, 1])
    inside = (i >= -2) & (i <= 1) & (j >= -2) & (j <= 1) & (np.mod(i + j, 2.0) == 0.0)
    return np.where(inside, -np.log(32.0), -np.inf)


# --------------------------------------------------------------------------- two moons

_MOON_SIGMA = 0.2  # sklearn noise 0.1, then scaled by 2
_MOON_PANELS = 32  # per moon; 8 nodes each (convergence: see the module docstring)


def _moon_points(t: np.ndarray, upper: bool) -> np.ndarray:
    if upper:  # sklearn's outer moon (cos t, sin t), * 2 + (-1, -0.2)
        return np.stack([2.0 * np.cos(t) - 1.0, 2.0 * np.sin(t) - 0.2], axis=-1)
    # sklearn's inner moon (1 - cos t, 0.5 - sin t), * 2 + (-1, -0.2)
    return np.stack([1.0 - 2.0 * np.cos(t), 0.8 - 2.0 * np.sin(t)], axis=-1)


def _sample_two_moons(rng: np.random.Generator, n: int) -> np.ndarray:
    upper = rng.integers(0, 2, size=n).astype(bool)
    t = rng.uniform(0.0, np.pi, size=n)
    pts = np.where(upper[:, None], _moon_points(t, True), _moon_points(t, False))
    return pts + _MOON_SIGMA * rng.standard_normal((n, 2))


def _logp_two_moons(x: np.ndarray, refine: int = 1) -> np.ndarray:
    t, w = _gauss_legendre(0.0, np.pi, _MOON_PANELS * refine)
    centres = np.concatenate([_moon_points(t, True), _moon_points(t, False)])
    # each moon has weight 1/2 and a uniform angle on [0, pi]: density 1 / pi
    logw = np.log(np.concatenate([w, w])) - np.log(2.0 * np.pi)
    return _gaussian_curve_log_density(x, centres, logw, _MOON_SIGMA)


# --------------------------------------------------------------------------- swiss roll

_SWISS_SIGMA = 0.2  # sklearn noise 1.0, then the set divided by 5
_SWISS_T = (1.5 * np.pi, 4.5 * np.pi)
_SWISS_PANELS = 96


def _swiss_points(t: np.ndarray) -> np.ndarray:
    return np.stack([t * np.cos(t), t * np.sin(t)], axis=-1) / 5.0


def _sample_swiss_roll(rng: np.random.Generator, n: int) -> np.ndarray:
    t = rng.uniform(*_SWISS_T, size=n)
    return _swiss_points(t) + _SWISS_SIGMA * rng.standard_normal((n, 2))


def _logp_swiss_roll(x: np.ndarray, refine: int = 1) -> np.ndarray:
    t, w = _gauss_legendre(_SWISS_T[0], _SWISS_T[1], _SWISS_PANELS * refine)
    logw = np.log(w) - np.log(_SWISS_T[1] - _SWISS_T[0])
    return _gaussian_curve_log_density(x, _swiss_points(t), logw, _SWISS_SIGMA)


# --------------------------------------------------------------------------- two spirals

_SPIRAL_SIGMA = 0.1
_SPIRAL_BOX = 0.5 / 3.0  # side of the uniform box after the division by 3
_SPIRAL_NMAX = 3.0 * np.pi  # 540 degrees
# Panels equally spaced in U (n = 3 pi sqrt(U)): the curve then moves at a nearly constant speed
# (3 pi^2 / 2 per unit of U), so every panel covers about the same length of spiral.
_SPIRAL_PANELS = 192


def _spiral_points(n: np.ndarray) -> np.ndarray:
    return np.stack([-np.cos(n) * n, np.sin(n) * n], axis=-1) / 3.0


def _sample_two_spirals(rng: np.random.Generator, n: int) -> np.ndarray:
    t = _SPIRAL_NMAX * np.sqrt(rng.uniform(size=n))
    pts = _spiral_points(t) + _SPIRAL_BOX * rng.uniform(size=(n, 2))
    sign = np.where(rng.integers(0, 2, size=n) == 0, 1.0, -1.0)
    return sign[:, None] * pts + _SPIRAL_SIGMA * rng.standard_normal((n, 2))


def _box_gauss(u: np.ndarray) -> np.ndarray:
    """Density at u of U[0, L] + N(0, s^2), computed without cancellation in either tail."""
    a = u / _SPIRAL_SIGMA
    b = (u - _SPIRAL_BOX) / _SPIRAL_SIGMA
    # Phi(a) - Phi(b) = Phi(-b) - Phi(-a): take the form whose terms are small, not near 1.
    flip = np.where(b > 0.0, -1.0, 1.0)
    return flip * (ndtr(flip * a) - ndtr(flip * b)) / _SPIRAL_BOX


# Node boxes farther than this (in squared units, beyond the nearest box) are dropped: their
# kernel is below exp(-37) = 1e-16 times the nearest one's, so the sum loses < 1e-12 relative.
_SPIRAL_CUT = 74.0 * _SPIRAL_SIGMA**2
_SPIRAL_HALF_DIAG = _SPIRAL_BOX / np.sqrt(2.0)


def _logp_two_spirals(x: np.ndarray, refine: int = 1) -> np.ndarray:
    panels = _SPIRAL_PANELS * refine
    t, w = _gauss_legendre_edges(_SPIRAL_NMAX * np.sqrt(np.linspace(0.0, 1.0, panels + 1)))
    # n = 3 pi sqrt(U) has density 2 n / (3 pi)^2 on [0, 3 pi]; each spiral has weight 1/2.
    weights = np.tile(w * t / _SPIRAL_NMAX**2, 2)
    corner = np.concatenate([_spiral_points(t), -_spiral_points(t) - _SPIRAL_BOX])
    cx, cy = corner[:, 0] + 0.5 * _SPIRAL_BOX, corner[:, 1] + 0.5 * _SPIRAL_BOX
    out = np.empty(x.shape[0])
    for sl in _chunks(x.shape[0], corner.shape[0]):
        xs = x[sl]
        d2 = np.square(xs[:, 0, None] - cx) + np.square(xs[:, 1, None] - cy)
        dmin = np.sqrt(d2.min(axis=1, keepdims=True))
        reach = _SPIRAL_HALF_DIAG + np.sqrt((dmin + _SPIRAL_HALF_DIAG) ** 2 + _SPIRAL_CUT)
        pi_, ni = np.nonzero(d2 <= reach**2)
        kern = _box_gauss(xs[pi_, 0] - corner[ni, 0]) * _box_gauss(xs[pi_, 1] - corner[ni, 1])
        dens = np.bincount(pi_, weights=weights[ni] * kern, minlength=xs.shape[0])
        with np.errstate(divide="ignore"):
            out[sl] = np.log(dens)
    return out


# --------------------------------------------------------------------------- pinwheel

_PW_RADIAL = 0.3
_PW_TANGENTIAL = 0.1
_PW_ARMS = 5
_PW_RATE = 0.25
# Pre-images are searched for r within 1 +- 8 radial sds and |s| <= 10 tangential sds: the
# mass outside is ~1e-15, and a pre-image outside adds at most e^-50 to the density. Given
# rho = |x| / 2 that confines r to two short windows (r^2 + s^2 = rho^2), each sampled at
# _PW_GRID points: spacing <= 1 / 64, well below the distance between roots of F (about
# 2 pi / theta'(r) >= 0.8 for r <= 3.4).
_PW_R_RANGE = (1.0 - 8 * _PW_RADIAL, 1.0 + 8 * _PW_RADIAL)
_PW_S_MAX = 10 * _PW_TANGENTIAL
_PW_GRID = 65


def _sample_pinwheel(rng: np.random.Generator, n: int) -> np.ndarray:
    k = rng.integers(0, _PW_ARMS, size=n)
    r = 1.0 + _PW_RADIAL * rng.standard_normal(n)
    s = _PW_TANGENTIAL * rng.standard_normal(n)
    theta = 2.0 * np.pi * k / _PW_ARMS + _PW_RATE * np.exp(r)
    c, sn = np.cos(theta), np.sin(theta)
    # FFJORD's einsum("ti,tij->tj") with R = [[c, -s], [s, c]]: (r, s) @ R, then times 2
    return 2.0 * np.stack([r * c + s * sn, -r * sn + s * c], axis=1)


def _logp_pinwheel(x: np.ndarray) -> np.ndarray:
    # Inverse map: with u = x / 2 = rho (cos phi, sin phi) and theta(r) = a_k + 0.25 e^r,
    # the pre-image satisfies r = rho cos(theta(r) + phi), s = rho sin(theta(r) + phi), and
    # the Jacobian determinant of (r, s) -> u is 1 + theta'(r) s. Every root r of
    # F(r) = r - rho cos(theta(r) + phi) contributes N(r) N(s) / |1 + theta' s|, / 4 for the
    # factor 2 and / 5 for the arm.
    u = x / 2.0
    rho = np.linalg.norm(u, axis=1)
    phi = np.arctan2(u[:, 1], u[:, 0])
    arms = 2.0 * np.pi * np.arange(_PW_ARMS) / _PW_ARMS
    # |s| <= S  <=>  |r| >= sqrt(rho^2 - S^2): windows [a, rho] and [-rho, -a], clipped
    a = np.sqrt(np.maximum(rho**2 - _PW_S_MAX**2, 0.0))
    lo = np.stack([np.maximum(a, _PW_R_RANGE[0]), np.maximum(-rho, _PW_R_RANGE[0])], axis=1)
    hi = np.stack([np.minimum(rho, _PW_R_RANGE[1]), np.minimum(-a, _PW_R_RANGE[1])], axis=1)
    frac = np.linspace(0.0, 1.0, _PW_GRID)
    out = np.full(x.shape[0], -np.inf)
    for sl in _chunks(x.shape[0], _PW_ARMS * 2 * _PW_GRID, budget=1_000_000):
        m = sl.stop - sl.start
        # r grid: (points, arms, windows, grid)
        width = np.maximum(hi[sl] - lo[sl], 0.0)
        r = lo[sl, None, :, None] + width[:, None, :, None] * frac
        r = np.broadcast_to(r, (m, _PW_ARMS, 2, _PW_GRID))
        rho_c = rho[sl, None, None, None]
        phase = arms[None, :, None, None] + phi[sl, None, None, None]
        f = r - rho_c * np.cos(phase + _PW_RATE * np.exp(r))
        neg = f < 0.0
        change = (neg[..., :-1] != neg[..., 1:]) & (width[:, None, :, None] > 0.0)
        pi_, ki, wi, gi = np.nonzero(change)
        if pi_.size == 0:
            continue
        b_lo = r[pi_, ki, wi, gi]
        b_hi = r[pi_, ki, wi, gi + 1]
        lo_neg = neg[pi_, ki, wi, gi]
        b_rho = rho[sl][pi_]
        b_phase = arms[ki] + phi[sl][pi_]
        for _ in range(48):  # bisection: bracket width <= 0.016 / 2^48
            mid = 0.5 * (b_lo + b_hi)
            mid_neg = (mid - b_rho * np.cos(b_phase + _PW_RATE * np.exp(mid))) < 0.0
            move_lo = mid_neg == lo_neg
            b_lo = np.where(move_lo, mid, b_lo)
            b_hi = np.where(move_lo, b_hi, mid)
        root = 0.5 * (b_lo + b_hi)
        grow = _PW_RATE * np.exp(root)
        s = b_rho * np.sin(b_phase + grow)
        logc = (
            -0.5 * ((root - 1.0) / _PW_RADIAL) ** 2
            - 0.5 * (s / _PW_TANGENTIAL) ** 2
            - _LOG_2PI
            - np.log(_PW_RADIAL * _PW_TANGENTIAL)
            - np.log(np.abs(1.0 + grow * s))
            - np.log(4.0 * _PW_ARMS)
        )
        peak = np.full(m, -np.inf)
        np.maximum.at(peak, pi_, logc)
        acc = np.zeros(m)
        np.add.at(acc, pi_, np.exp(logc - peak[pi_]))
        hit = acc > 0.0
        idx = np.arange(sl.start, sl.stop)[hit]
        out[idx] = peak[hit] + np.log(acc[hit])
    return out


# --------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class _Toy:
    sample: Callable[[np.random.Generator, int], np.ndarray]
    log_density: Callable[[np.ndarray], np.ndarray]


_TOYS: dict[str, _Toy] = {
    "eight_gaussians": _Toy(_sample_eight_gaussians, _logp_eight_gaussians),
    "two_moons": _Toy(_sample_two_moons, _logp_two_moons),
    "rings": _Toy(_sample_rings, _logp_rings),
    "pinwheel": _Toy(_sample_pinwheel, _logp_pinwheel),
    "two_spirals": _Toy(_sample_two_spirals, _logp_two_spirals),
    "checkerboard": _Toy(_sample_checkerboard, _logp_checkerboard),
    "swiss_roll": _Toy(_sample_swiss_roll, _logp_swiss_roll),
}


def sample_toy(
    name: str,
    n: int,
    seed: int = 0,
    *,
    rng: np.random.Generator | None = None,
    dtype: type | np.dtype = np.float32,
) -> np.ndarray:
    """Draw ``n`` points (n, 2) from toy set ``name``; the same ``seed`` gives the same points.

    Pass ``rng`` (a numpy Generator) instead of ``seed`` to draw a stream of fresh batches.
    """
    key = _require(name)
    if int(n) < 0:
        raise DatasetError(f"number of samples must be >= 0, got {n}")
    gen = rng if rng is not None else np.random.default_rng(seed)
    return _TOYS[key].sample(gen, int(n)).astype(dtype, copy=False)


def toy_log_density(name: str, x: np.ndarray) -> np.ndarray:
    """True log density (float64, shape (n,)) of toy set ``name`` at points ``x`` (n, 2).

    This is the density the sampler draws from, so its mean over fresh samples is the NLL floor
    (the entropy) a perfect model would reach. Points where the density underflows float64
    (or lies outside the support, for checkerboard) give -inf.
    """
    key = _require(name)
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise DatasetError(f"toy densities take points of shape (n, 2); got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DatasetError("toy densities need finite points; got NaN or inf")
    if arr.shape[0] == 0:
        return np.zeros(0)
    return _TOYS[key].log_density(arr)
