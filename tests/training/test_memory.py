"""Evaluation in chunks sized by a memory budget: the rows follow the budget, the scores do
not depend on the chunking (issue #31)."""

from __future__ import annotations

import pytest
import torch

from cpflow import FlowConfig
from training.config import TrainConfig
from training.images import load_image_dataset
from training.memory import activation_floats, eval_chunk_rows
from training.trainer import Trainer, evaluate_nll

SMALL_IMAGE_FLOW = {"input_shape": (1, 8, 8), "blocks": [1, 1], "hidden": 4, "depth": 2}


def test_rows_per_chunk_grow_with_the_budget_and_shrink_with_the_model() -> None:
    rows = [eval_chunk_rows(mb, 64, "exact", activations=4096) for mb in (64, 128, 512)]
    assert rows[0] >= 2 and abs(rows[1] - 2 * rows[0]) <= 1 and abs(rows[2] - 8 * rows[0]) <= 8
    assert eval_chunk_rows(64, 64, "exact", activations=16384) < rows[0]
    # the exact log-det pays for d passes at once, SLQ for its probes only
    assert eval_chunk_rows(64, 64, "slq", activations=4096, probes=8) > rows[0]
    assert eval_chunk_rows(64, 64, "exact", activations=4096, dtype_bytes=8) < rows[0]
    assert eval_chunk_rows(0.001, 64, "exact", activations=4096) == 1  # never zero rows
    with pytest.raises(ValueError, match="unknown method"):
        eval_chunk_rows(64, 64, "auto", activations=4096)


def test_activation_floats_count_the_pixels_of_image_potentials() -> None:
    dense = FlowConfig.model_validate({"dim": 64, "hidden": 32, "depth": 3})
    image = FlowConfig.model_validate({"dim": 64, **SMALL_IMAGE_FLOW})
    assert activation_floats(dense) == 96
    assert activation_floats(image) == 4 * 2 * 64


@pytest.fixture(scope="module")
def digits():
    return load_image_dataset("digits")


def _trainer(digits, **kw) -> Trainer:
    cfg = TrainConfig(iterations=1, batch_size=16, dtype="float64")
    return Trainer(SMALL_IMAGE_FLOW, digits, cfg, resume=False, **kw)


def test_the_trainer_scores_as_many_rows_as_the_budget_allows(digits, monkeypatch) -> None:
    small, large = _trainer(digits, eval_memory_mb=20), _trainer(digits, eval_memory_mb=80)
    assert 1 < small.eval_rows < large.eval_rows < 1024
    assert abs(large.eval_rows - 4 * small.eval_rows) <= 4
    monkeypatch.setenv("CPFLOW_EVAL_MEMORY_MB", "20")
    assert _trainer(digits).eval_rows == small.eval_rows
    monkeypatch.setenv("CPFLOW_EVAL_MEMORY_MB", "100000")  # eval_batch_size still caps it
    assert _trainer(digits).eval_rows == 1024


def test_chunked_scoring_equals_unchunked(digits) -> None:
    trainer = _trainer(digits, eval_memory_mb=20)
    flow = trainer.flow.eval()
    x = trainer.data.x_val[:60]
    assert trainer.eval_rows < 30  # at least three chunks
    chunked, _ = evaluate_nll(flow, x, method="exact", batch_size=trainer.eval_rows)
    whole, _ = evaluate_nll(flow, x, method="exact", batch_size=len(x))
    with torch.no_grad():
        per_row = -flow.log_prob(x, method="exact")
    assert chunked == pytest.approx(whole, rel=1e-10, abs=1e-10)
    assert chunked == pytest.approx(float(per_row.mean()), rel=1e-10, abs=1e-10)


def test_plot_grids_are_scored_in_budget_sized_chunks(monkeypatch) -> None:
    import numpy as np

    from cpflow import CPFlow
    from training.plots import _grid_chunk_rows, _log_prob_grid

    flow = CPFlow(FlowConfig(dim=2, blocks=2, hidden=8, depth=2, dtype="float64")).eval()
    pts = np.random.default_rng(0).normal(size=(500, 2))
    assert _grid_chunk_rows(flow) == 4096  # the default budget holds a whole grid chunk
    monkeypatch.setenv("CPFLOW_EVAL_MEMORY_MB", "0.05")
    assert 1 < _grid_chunk_rows(flow) < 100
    with torch.no_grad():
        direct = flow.log_prob(torch.as_tensor(pts), method="exact").numpy()
    np.testing.assert_allclose(_log_prob_grid(flow, pts), direct, rtol=1e-12, atol=1e-12)
