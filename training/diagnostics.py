"""The numbers behind a model's held-out diagnostics (``training.plots`` draws them).

A flow maps data x to z = f(x), standard normal in d dimensions when the model is right, so
|f(x)|^2 of held-out rows should follow the chi-square distribution with d degrees of freedom:
the calibration QQ plot sets their sorted values against that distribution's quantiles (points
on the diagonal: calibrated; above it: held-out rows land further out than the model expects,
the model is too narrow). Held-out rows are the test split (the validation split when there is
none), capped at :data:`HELDOUT_ROWS` and scored in chunks within the evaluation memory budget
(``CPFLOW_EVAL_MEMORY_MB``, ``training.memory``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from training.images import uniform_dequantize
from training.memory import activation_floats, eval_chunk_rows
from training.settings import TrainingSettings
from training.splits_protocol import Splits, splits_info

__all__ = [
    "HELDOUT_ROWS",
    "HELDOUT_ROWS_SLQ",
    "Heldout",
    "calibration_qq",
    "chunk_rows",
    "heldout_rows",
    "heldout_samples",
    "heldout_scores",
    "reference_tensor",
]

HELDOUT_ROWS = 2000
"""Most held-out rows the diagnostics score (exact log-dets)."""

HELDOUT_ROWS_SLQ = 500
"""Most held-out rows when the log-densities need SLQ (d above the flow's exact_max_dim)."""


@dataclass(frozen=True)
class Heldout:
    """Held-out rows (n, d) as the flow takes them, their contexts, and the split's name."""

    rows: np.ndarray
    contexts: np.ndarray | None
    split: str


@dataclass(frozen=True)
class HeldoutScores:
    """Per held-out row: |f(x)|^2 and log p(x) (nats), and the log-det method used."""

    sq_norms: np.ndarray
    log_prob: np.ndarray
    method: str


def heldout_rows(splits: Splits, most: int, seed: int = 0) -> Heldout | None:
    """Up to ``most`` rows of the test split (else the validation split), None if neither has
    any. Integer images are dequantised with fixed noise, as the trainer scores them."""
    info = splits_info(splits)
    for index, name in ((2, "test"), (1, "val")):
        part = getattr(splits, name)
        if part is None or len(part) == 0:
            continue
        rows = np.asarray(part[:most], dtype=np.float64).reshape(min(len(part), most), -1)
        if info.levels:
            gen = torch.Generator().manual_seed(seed)
            rows = uniform_dequantize(torch.as_tensor(rows), info.levels, gen).numpy()
        contexts = None if info.contexts is None else np.asarray(info.contexts[index])[:most]
        return Heldout(rows, contexts, name)
    return None


def reference_tensor(flow: Any) -> torch.Tensor:
    """A tensor of the flow's (device, dtype): its first parameter, else its first buffer."""
    ref: torch.Tensor | None = next(iter(flow.parameters()), None)
    return next(iter(flow.buffers())) if ref is None else ref


def chunk_rows(flow: Any, method: str) -> int:
    """Rows scored at a time: what the evaluation memory budget allows for ``method``."""
    dtype_bytes = reference_tensor(flow).element_size()
    budget = TrainingSettings().eval_memory_mb
    config = flow.config
    return eval_chunk_rows(
        budget, int(flow.dim), method, activations=activation_floats(config),
        probes=config.slq_probes, steps=config.slq_steps, dtype_bytes=dtype_bytes,
    )  # fmt: skip


def _chunks(
    heldout: Heldout, step: int, ref: torch.Tensor
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """The held-out rows and their contexts, ``step`` rows at a time, as the flow's tensors."""

    def tensor(arr: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(arr, dtype=ref.dtype, device=ref.device)

    for start in range(0, len(heldout.rows), step):
        stop = start + step
        contexts = heldout.contexts
        yield (
            tensor(heldout.rows[start:stop]),
            None if contexts is None else tensor(contexts[start:stop]),
        )


def heldout_scores(flow: Any, heldout: Heldout, seed: int = 0) -> HeldoutScores:
    """|f(x)|^2 and log p(x) of the held-out rows, chunked within the memory budget."""
    method = "exact" if flow.dim <= flow.config.exact_max_dim else "slq"
    ref = reference_tensor(flow)
    step = chunk_rows(flow, method)
    generator = torch.Generator(device=ref.device).manual_seed(seed)
    norms, logps = [], []
    for x, c in _chunks(heldout, step, ref):
        with torch.no_grad():
            z = flow.transform(x, c).reshape(x.shape[0], -1)
            lp = flow.log_prob(x, c, method=method, generator=generator)
        norms.append(z.double().pow(2).sum(dim=1).cpu().numpy())
        logps.append(lp.detach().double().cpu().numpy())
    return HeldoutScores(np.concatenate(norms), np.concatenate(logps), method)


def heldout_samples(flow: Any, heldout: Heldout, seed: int = 0) -> np.ndarray:
    """As many samples as held-out rows (a conditional flow's at the held-out contexts),
    drawn in chunks within the memory budget (the inverse holds a (d, d) Jacobian a row)."""
    ref = reference_tensor(flow)
    step = chunk_rows(flow, "exact")
    generator = torch.Generator(device=ref.device).manual_seed(seed)
    out = []
    for rows, c in _chunks(heldout, step, ref):
        x, _ = flow.sample(rows.shape[0], c, generator=generator)
        out.append(x.detach().double().cpu().numpy().reshape(rows.shape[0], -1))
    return np.concatenate(out)


def calibration_qq(sq_norms: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(chi-square(``dim``) quantiles at the plotting positions (i - 0.5) / n, the sorted
    ``sq_norms``): the QQ plot's points, on the diagonal for a calibrated flow."""
    observed = np.sort(np.asarray(sq_norms, dtype=np.float64))
    n = len(observed)
    expected = stats.chi2.ppf((np.arange(1, n + 1) - 0.5) / n, df=dim)
    return expected, observed
