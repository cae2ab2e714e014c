"""The Trainer's parts on their own (step, validate, finish) and its TrainState as the one
definition of a checkpoint: every field survives a save and restore, and a run interrupted and
resumed equals an uninterrupted one bit for bit on CPU."""

from __future__ import annotations

import copy
import math
from dataclasses import fields
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from training.config import TrainConfig
from training.state import TrainState
from training.trainer import Trainer, TrainingCancelled

FLOW = {"blocks": 2, "hidden": 8, "depth": 1, "dtype": "float64"}


def _splits(n: int = 600, dim: int = 3) -> SimpleNamespace:
    """Correlated rows (so the CG surrogate works for its probes), 420 train rows."""
    rng = np.random.default_rng(4)
    mix = np.array([[1.0, 0.4, 0.0], [0.0, 1.0, 0.5], [0.3, 0.0, 0.7]])[:dim, :dim]
    x = (rng.normal(size=(n, dim)) @ mix + rng.integers(0, 2, size=(n, 1)) * 2.0).astype(
        np.float32
    )
    a, b = int(0.7 * n), int(0.85 * n)
    return SimpleNamespace(name="mix3", train=x[:a], val=x[a:b], test=x[b:], sha256="s" * 8)


def _cfg(**kw: Any) -> TrainConfig:
    base = {"iterations": 30, "batch_size": 32, "lr": 1e-2, "val_every": 5, "seed": 11}
    return TrainConfig(**{**base, **kw})


def _nll(flow: torch.nn.Module, x: Any) -> float:
    with torch.no_grad():
        xt = torch.as_tensor(np.asarray(x), dtype=torch.float64)
        return -float(flow.log_prob(xt, method="exact").mean())


def _differences(a: TrainState, b: TrainState, skip: tuple[str, ...] = ()) -> list[str]:
    """Names of the fields (generically: every field of TrainState) where ``a`` and ``b``
    differ; tensors must be equal bit for bit."""

    def same(x: Any, y: Any) -> bool:
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            return (
                isinstance(x, torch.Tensor)
                and isinstance(y, torch.Tensor)
                and x.dtype == y.dtype
                and torch.equal(x.cpu(), y.cpu())
            )
        if isinstance(x, dict) and isinstance(y, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, list | tuple) and isinstance(y, list | tuple):
            return len(x) == len(y) and all(same(u, v) for u, v in zip(x, y, strict=True))
        if isinstance(x, torch.nn.Module | torch.optim.Optimizer):
            return type(x) is type(y) and same(x.state_dict(), y.state_dict())
        if isinstance(x, torch.Generator):
            return isinstance(y, torch.Generator) and same(x.get_state(), y.get_state())
        return x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))

    return [f.name for f in fields(a) if f.name not in skip and not same(*_values(a, b, f.name))]


def _values(a: TrainState, b: TrainState, name: str) -> tuple[Any, Any]:
    va, vb = getattr(a, name), getattr(b, name)
    if name == "history":  # wall-clock times differ between runs; everything else may not
        va = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in va]
        vb = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in vb]
    return va, vb


# -- the parts on their own -----------------------------------------------------------------


def test_step_takes_one_adam_step_on_the_seeded_batch() -> None:
    splits = _splits()
    trainer = Trainer(FLOW, splits, _cfg(loss="exact", batch_size=16))
    before = copy.deepcopy(trainer.flow)
    loss = trainer.step()

    # Independent reference: the same rows (the first of the seeded permutation), the exact
    # NLL, and one step of a plain (unfused) Adam from the weights before the step.
    perm = torch.randperm(420, generator=torch.Generator().manual_seed(11 + 1))
    rows = torch.as_tensor(splits.train[perm[:16].numpy()], dtype=torch.float64)
    ref_loss = -before.log_prob(rows, method="exact").mean()
    assert loss == pytest.approx(float(ref_loss.detach()), abs=1e-12)
    params = [p for p in before.parameters() if p.requires_grad]
    adam = torch.optim.Adam(params, lr=1e-2)
    ref_loss.backward()
    adam.step()
    for (name, p), q in zip(trainer.flow.named_parameters(), params, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12, msg=name)
    assert trainer.state.iteration == 1 and trainer.state.loss_window == [loss]
    assert trainer.state.epoch_rows == 16 and trainer.state.perm is not None


def test_validate_scores_the_val_split_keeps_the_best_and_stops_early() -> None:
    splits = _splits()
    cfg = _cfg(schedule="plateau", plateau_patience=1, early_stopping_patience=2)
    trainer = Trainer(FLOW, splits, cfg)
    record = trainer.validate()
    assert record["val_nll"] == pytest.approx(_nll(trainer.flow, splits.val), abs=1e-10)
    state = trainer.state
    assert state.best_val == record["val_nll"] and state.best_iteration == 0
    assert state.best_weights is not None and not state.stopped_early
    best = {k: v.clone() for k, v in state.best_weights.items()}

    trainer.step()
    state.best_val = record["val_nll"] - 1.0  # pretend an earlier, much better validation
    second = trainer.validate()
    assert second["iteration"] == 1 and state.bad_validations == 1
    assert state.lr_decays == 1 and not state.stopped_early  # plateau: one 10x decay
    assert all(torch.equal(best[k], v) for k, v in state.best_weights.items())  # kept
    trainer.validate()
    assert state.bad_validations == 2 and state.stopped_early  # patience 2 reached
    assert [h["iteration"] for h in state.history] == [0, 1, 1]


def test_finish_scores_the_best_weights_on_every_split() -> None:
    splits = _splits()
    trainer = Trainer(FLOW, splits, _cfg())
    trainer.validate()
    trainer.step()
    trainer.step()  # the current weights are not the best ones kept at iteration 0
    result = trainer.finish()
    assert all(
        torch.equal(result.flow.state_dict()[k], v) for k, v in trainer.state.best_weights.items()
    )
    for name in ("train", "val", "test"):
        direct = _nll(result.flow, getattr(splits, name))
        assert result.metrics[f"{name}_nll"] == pytest.approx(direct, abs=1e-10)
    assert result.iterations_run == 2 and result.best_iteration == 0


# -- the checkpoint is the state ---------------------------------------------------------------


def test_every_field_of_the_state_survives_a_checkpoint(tmp_path) -> None:
    cfg = _cfg(loss="surrogate")
    trainer = Trainer(FLOW, _splits(), cfg, checkpoint_dir=tmp_path)
    trainer.validate()
    for _ in range(3):
        trainer.step()
    trainer.validate()
    trainer.step()
    state = trainer.state
    # Distinct, non-default values everywhere, so that any field left behind shows.
    state.best_iteration, state.bad_validations, state.lr_decays = 3, 4, 1
    state.best_val, state.stopped_early, state.elapsed_s = -1.25, True, 0.0
    state.epoch = 2
    fresh = Trainer(FLOW, _splits(), cfg, checkpoint_dir=tmp_path / "none")
    defaults = _differences(state, fresh.state, skip=("elapsed_s",))
    assert set(defaults) == {f.name for f in fields(state)} - {"elapsed_s"}, defaults

    trainer.checkpoint()
    restored = Trainer(FLOW, _splits(), cfg, checkpoint_dir=tmp_path).state
    assert _differences(state, restored) == []
    assert restored.elapsed_s > 0


def test_an_interrupted_run_resumed_equals_the_uninterrupted_one_bit_for_bit(tmp_path) -> None:
    # Surrogate loss (probes from the loss generator), a plateau schedule that has decayed
    # once and a best model older than the last validation when the run is interrupted,
    # mid-epoch (13 batches per epoch) between two validations and checkpoints.
    cfg = _cfg(
        iterations=34,
        lr=3e-2,
        loss="surrogate",
        schedule="plateau",
        plateau_patience=1,
        early_stopping_min_delta=0.02,
        checkpoint_every=100,
    )
    reference = Trainer(FLOW, _splits(), cfg)
    expected = reference.run()

    asked = {"n": 0}

    def stop_at_17() -> bool:
        asked["n"] += 1
        return asked["n"] > 17

    first = Trainer(FLOW, _splits(), cfg, checkpoint_dir=tmp_path, should_stop=stop_at_17)
    with pytest.raises(TrainingCancelled) as info:
        first.run()
    assert info.value.iteration == 17
    state = first.state
    assert state.epoch == 1 and state.epoch_rows and state.loss_window  # mid-epoch, mid-window
    assert state.bad_validations == 1 and state.lr_decays == 1 and state.best_iteration == 10
    resumed = Trainer(FLOW, _splits(), cfg, checkpoint_dir=tmp_path)
    assert resumed.state.iteration == 17
    got = resumed.run()

    # Every field of the final state: weights, Adam's moments and steps, both generators,
    # the permutation, the best weights, counters, the schedule's decays, the history.
    assert _differences(reference.state, resumed.state, skip=("elapsed_s",)) == []
    for name, p in expected.flow.state_dict().items():
        assert torch.equal(p, got.flow.state_dict()[name]), name
    assert {k: v for k, v in got.metrics.items()} == expected.metrics
    assert got.best_iteration == expected.best_iteration and got.iterations_run == 34


def test_a_finished_run_resumed_from_its_last_checkpoint_trains_no_further(tmp_path) -> None:
    # Early stopping after two validations without improvement: the run ends at iteration 20
    # of 34 (see the test above for the curve); resuming its final checkpoint (a crash before
    # publishing) must give the same result, not train on.
    cfg = _cfg(iterations=34, lr=3e-2, loss="surrogate", early_stopping_patience=2,
               early_stopping_min_delta=0.02)  # fmt: skip
    first = Trainer(FLOW, _splits(), cfg, checkpoint_dir=tmp_path)
    expected = first.run()
    assert expected.stopped_early and expected.iterations_run == 20
    again = Trainer(FLOW, _splits(), cfg, checkpoint_dir=tmp_path)
    got = again.run()
    assert got.iterations_run == 20 and got.stopped_early
    assert _differences(first.state, again.state, skip=("elapsed_s",)) == []
    assert got.metrics == expected.metrics
