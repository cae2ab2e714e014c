"""The exact log-density's CPU batching: cache-sized batches give the same numbers."""

from __future__ import annotations

import torch

from cpflow.flow import EXACT_CACHE_BYTES, EXACT_MIN_ROWS, exact_rows
from tests.helpers.flows import make_flow


def test_exact_rows_fill_the_cache_on_a_cpu_and_take_everything_elsewhere():
    x32 = torch.zeros(1, dtype=torch.float32)
    assert exact_rows(1024, 43, x32) == EXACT_CACHE_BYTES // (43 * 43 * 4)
    assert exact_rows(1024, 128, x32) == EXACT_MIN_ROWS  # large d: the floor
    assert exact_rows(100, 43, x32) == 100  # never more than the batch
    assert exact_rows(0, 43, x32) == 1
    assert exact_rows(10**6, 43, torch.zeros(1, device="meta")) == 10**6  # GPUs: one batch


def test_batched_exact_log_prob_equals_one_batch():
    """A batch of 700 rows at d = 40 is scored in three CPU batches by default; the rows are
    independent, so the result is the one-batch result up to float32 round-off."""
    flow = make_flow(40, seed=3, blocks=2, hidden=16)
    x = torch.randn(700, 40, generator=torch.Generator().manual_seed(1)) + 1.0
    assert exact_rows(700, 40, x) < 700 / 2
    with torch.no_grad():
        batched = flow.log_prob(x, method="exact")
        flow.config.exact_chunk = 700
        whole = flow.log_prob(x, method="exact")
    torch.testing.assert_close(batched, whole, rtol=1e-6, atol=0)
