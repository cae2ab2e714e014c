"""The Gaussian optimal-transport experiment (paper §5.2, App. E.3): data, optimum, measures.

Data are N(m, S) with S drawn from a Wishart distribution; the base is N(0, I). The closed-form
squared 2-Wasserstein distance between them is the optimal transport cost
W2^2 = |m|^2 + tr(S + I - 2 S^{1/2}). A flow whose map x -> z is a Brenier map (one CP-Flow
block, no ActNorm, isotropic standardisation) should approach it as KL(p || q) falls.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import linalg

from training.datasets.splits import DatasetSplits

__all__ = [
    "GaussianOTProblem",
    "OTSplits",
    "make_problem",
    "make_splits",
    "ot_monitor",
    "parse_ot_dataset",
    "transport_cost",
]


@dataclass(frozen=True)
class OTSplits(DatasetSplits):
    """The splits of the OT experiment, with the Gaussian problem behind them."""

    problem: GaussianOTProblem | None = None


@dataclass
class GaussianOTProblem:
    """N(mean, cov) in ``dim`` dimensions and the closed-form facts about it."""

    dim: int
    mean: np.ndarray
    cov: np.ndarray

    @property
    def w2_squared(self) -> float:
        """Optimal transport cost E|x - T(x)|^2 from N(mean, cov) to N(0, I)."""
        root = np.real(linalg.sqrtm(self.cov))
        return float(self.mean @ self.mean + np.trace(self.cov + np.eye(self.dim) - 2 * root))

    def log_density(self, x: np.ndarray) -> np.ndarray:
        """Exact log N(x; mean, cov) (the floor for the model's NLL)."""
        chol = np.linalg.cholesky(self.cov)
        diff = np.linalg.solve(chol, (np.asarray(x, dtype=np.float64) - self.mean).T)
        logdet = 2 * np.log(np.diag(chol)).sum()
        return -0.5 * (diff**2).sum(0) - 0.5 * logdet - 0.5 * self.dim * np.log(2 * np.pi)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.multivariate_normal(self.mean, self.cov, size=n)

    def optimal_map(self, x: np.ndarray) -> np.ndarray:
        """The Brenier map T(x) = S^{-1/2} (x - m) (symmetric root)."""
        root = np.real(linalg.sqrtm(self.cov))
        return np.linalg.solve(root, (np.asarray(x, dtype=np.float64) - self.mean).T).T


def make_problem(dim: int, seed: int = 0) -> GaussianOTProblem:
    """A random N(m, S): m ~ N(0, I), S ~ Wishart(df=2d, I/(2d)) so E[S] = I.

    Two degrees of freedom per dimension keep S well conditioned (df=d can be near-singular in
    low dimension), which keeps the experiment about transport rather than about conditioning.
    The 2-D case uses the paper's fixed m = (1.5, 1.0), S = [[0.9, -0.75], [-0.75, 0.9]].
    """
    if dim == 2:
        return GaussianOTProblem(2, np.array([1.5, 1.0]), np.array([[0.9, -0.75], [-0.75, 0.9]]))
    rng = np.random.default_rng(seed + 1000 * dim)
    df = 2 * dim
    a = rng.normal(size=(dim, df)) / np.sqrt(df)
    return GaussianOTProblem(dim, rng.normal(size=dim), a @ a.T)


def make_splits(
    dim: int, *, num_samples: int | None = None, seed: int = 0
) -> tuple[OTSplits, GaussianOTProblem]:
    """50,000 rows by default, split 80/10/10 as the paper's OT script (50k train, 10k test)."""
    problem = make_problem(dim, seed)
    n = num_samples or 50000
    rng = np.random.default_rng(seed)
    x = problem.sample(n, rng).astype(np.float32)
    a, b = int(0.8 * n), int(0.9 * n)
    digest = hashlib.sha256(x.tobytes()).hexdigest()
    meta = {"w2_squared": problem.w2_squared, "mean": problem.mean.tolist()}
    splits = OTSplits(f"wishart_gaussian:{dim}", x[:a], x[a:b], x[b:], digest, meta, problem)
    return splits, problem


def parse_ot_dataset(name: str) -> int | None:
    """``wishart_gaussian:D`` -> D; other names -> None."""
    prefix = "wishart_gaussian:"
    if not name.startswith(prefix):
        return None
    try:
        dim = int(name[len(prefix) :])
    except ValueError:
        raise ValueError(f"{name!r}: write wishart_gaussian:<dimension>, e.g. :8") from None
    if dim < 1:
        raise ValueError(f"{name!r}: the dimension must be positive")
    return dim


def transport_cost(transform: Any, x: np.ndarray) -> float:
    """Monte Carlo E|x - T(x)|^2 of a map ``transform`` (torch in, torch out) on rows ``x``."""
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    with torch.no_grad():
        z = transform(xt).double()
    return float(((xt - z) ** 2).sum(1).mean())


def ot_monitor(problem: GaussianOTProblem, x: np.ndarray) -> tuple[list[tuple[float, float]], Any]:
    """A trainer ``on_validate`` hook recording (KL(p||q), transport cost) on rows ``x``.

    KL uses exact log densities of both the data distribution and the model, so it is a plain
    Monte Carlo estimate over ``x``.
    """
    curve: list[tuple[float, float]] = []
    x64 = np.asarray(x, dtype=np.float64)
    log_p = problem.log_density(x64)

    def hook(flow: Any, iteration: int) -> dict[str, float]:
        with torch.no_grad():
            log_q = flow.log_prob(torch.as_tensor(x64), method="exact").double().cpu().numpy()
        kl = float(np.mean(log_p - log_q))
        cost = transport_cost(flow.transform, x64)
        curve.append((kl, cost))
        return {"kl": kl, "transport_cost": cost}

    return curve, hook
