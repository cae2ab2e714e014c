"""Trainer: real-likelihood metrics, resume equivalence, divergence and cancellation."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cpflow import CPFlow
from training.checkpoint import CheckpointError, load_checkpoint
from training.config import TrainConfig
from training.trainer import (
    TrainingCancelled,
    TrainingDiverged,
    _Schedule,
    evaluate_nll,
    train,
)

TINY_FLOW = {"blocks": 1, "hidden": 8, "depth": 1, "dtype": "float64"}


def _splits(n: int = 600, dim: int = 2, seed: int = 0) -> SimpleNamespace:
    """A skewed 2-component mixture, different scales per column (so standardising matters)."""
    rng = np.random.default_rng(seed)
    comp = rng.integers(0, 2, size=n)
    x = rng.normal(size=(n, dim)) * np.array([0.5, 2.0, 1.0, 1.0][:dim]) + comp[:, None] * 3.0
    x = x.astype(np.float32)
    a, b = int(0.7 * n), int(0.85 * n)
    return SimpleNamespace(name="mix", train=x[:a], val=x[a:b], test=x[b:], sha256="abc")


def _cfg(**kw) -> TrainConfig:
    base = {"iterations": 24, "batch_size": 32, "lr": 5e-3, "val_every": 8, "seed": 3}
    base.update(kw)
    return TrainConfig(**base)


def _state_equal(a: CPFlow, b: CPFlow) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].numel())


def test_metrics_are_the_exact_likelihood_not_the_surrogate() -> None:
    splits = _splits()
    res = train(TINY_FLOW, splits, _cfg())
    assert res.metrics["method"] == "exact"
    for name in ("train", "val", "test"):
        x = torch.as_tensor(getattr(splits, name), dtype=torch.float64)
        with torch.no_grad():
            direct = -float(res.flow.log_prob(x, method="exact").mean())
        # Same computation in float64, only batching differs: agree to rounding.
        assert res.metrics[f"{name}_nll"] == pytest.approx(direct, abs=1e-8)
    # The history's validation NLLs are real likelihoods too: the best one equals the metric
    # (val_max_points covers the whole val split here).
    best = min(h["val_nll"] for h in res.history)
    assert res.metrics["val_nll"] == pytest.approx(best, abs=1e-8)
    assert res.iterations_run == 24 and res.parameter_count > 0
    # Training helps on this data: the final val NLL beats the untrained flow's.
    assert res.metrics["val_nll"] < res.history[0]["val_nll"]


def test_standardisation_is_fitted_on_the_train_split_only() -> None:
    splits = _splits()
    res = train(TINY_FLOW, splits, _cfg(iterations=2))
    mean = torch.as_tensor(splits.train.astype(np.float64).mean(0))
    std = torch.as_tensor(splits.train.astype(np.float64).std(0))
    buffers = {k: v for k, v in res.flow.state_dict().items() if "standard" in k.lower()}
    means = [v for k, v in buffers.items() if k.endswith("mean")]
    stds = [v for k, v in buffers.items() if k.endswith("std")]
    assert len(means) == 1 and len(stds) == 1, buffers.keys()
    torch.testing.assert_close(means[0].double(), mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(stds[0].double(), std, atol=1e-6, rtol=0)


def test_slq_validation_above_exact_max_dim_reports_a_stderr() -> None:
    splits = _splits(n=300)
    res = train(TINY_FLOW, splits, _cfg(iterations=4, exact_max_dim=1, slq_probes=4))
    assert res.metrics["method"] == "slq"
    assert res.metrics["test_nll_stderr"] is not None and res.metrics["test_nll_stderr"] >= 0
    x = torch.as_tensor(splits.test, dtype=torch.float64)
    with torch.no_grad():
        exact = -float(res.flow.log_prob(x, method="exact").mean())
    # SLQ on a 2x2 Hessian with 20 Lanczos steps is essentially exact per probe; allow
    # 6 standard errors plus a small bias margin.
    assert abs(res.metrics["test_nll"] - exact) < 6 * res.metrics["test_nll_stderr"] + 0.02


@pytest.mark.parametrize("loss", ["surrogate", "exact"])
def test_resume_after_a_crash_reproduces_the_uninterrupted_run(tmp_path, loss) -> None:
    splits = _splits()
    cfg = _cfg(iterations=30, checkpoint_every=5, loss=loss)
    reference = train(TINY_FLOW, splits, cfg)

    class Crash(Exception):
        pass

    def crash_at_17(ev) -> None:
        if ev.phase == "train" and ev.iteration == 17:
            raise Crash

    with pytest.raises(Crash):
        train(TINY_FLOW, splits, cfg, checkpoint_dir=tmp_path, progress=crash_at_17)
    _, meta = load_checkpoint(tmp_path)
    assert meta["iteration"] == 15  # the last periodic checkpoint before the crash
    resumed = train(TINY_FLOW, splits, cfg, checkpoint_dir=tmp_path)
    assert resumed.iterations_run == 30
    # Same seed, same RNG streams restored, float64: bit-exact in practice; 1e-12 allows for
    # nothing but identical arithmetic.
    assert _state_equal(reference.flow, resumed.flow) <= 1e-12
    assert resumed.metrics["test_nll"] == pytest.approx(reference.metrics["test_nll"], abs=1e-12)
    assert [h["val_nll"] for h in resumed.history] == pytest.approx(
        [h["val_nll"] for h in reference.history], abs=1e-12
    )


def test_cancel_then_resume_matches_and_plateau_schedule_state_survives(tmp_path) -> None:
    splits = _splits()
    cfg = _cfg(iterations=28, schedule="plateau", plateau_patience=1, val_every=4, lr=2e-2)
    reference = train(TINY_FLOW, splits, cfg)
    calls = {"n": 0}

    def stop_after_11() -> bool:
        calls["n"] += 1
        return calls["n"] > 11

    with pytest.raises(TrainingCancelled) as info:
        train(TINY_FLOW, splits, cfg, checkpoint_dir=tmp_path, should_stop=stop_after_11)
    assert info.value.iteration == 11
    resumed = train(TINY_FLOW, splits, cfg, checkpoint_dir=tmp_path)
    assert _state_equal(reference.flow, resumed.flow) <= 1e-12
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in reference.history]


def test_resume_refuses_a_checkpoint_from_another_run(tmp_path) -> None:
    splits = _splits()
    train(TINY_FLOW, splits, _cfg(iterations=5, checkpoint_every=5), checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="different run"):
        train(TINY_FLOW, splits, _cfg(iterations=5, lr=1e-2), checkpoint_dir=tmp_path)
    # resume=False starts over instead.
    res = train(
        TINY_FLOW, splits, _cfg(iterations=5, lr=1e-2), checkpoint_dir=tmp_path, resume=False
    )
    assert res.iterations_run == 5


def test_nan_in_the_data_stops_with_the_iteration_named() -> None:
    splits = _splits(n=200)
    train_x = splits.train[:32].copy()
    train_x[7, 1] = np.nan
    bad = SimpleNamespace(name="bad", train=train_x, val=splits.val, test=splits.test, sha256="x")
    # batch 32 over 32 rows: every batch holds the NaN row, so the first step must fail.
    with pytest.raises(TrainingDiverged, match=r"iteration 1\b.*non-finite input") as info:
        train(TINY_FLOW, bad, _cfg(batch_size=32))
    assert info.value.iteration == 1


def test_nan_weights_stop_with_the_iteration_named() -> None:
    splits = _splits(n=200)
    holder: dict = {}

    # Reach the flow through the validation hook (called at iteration 0), then poison a
    # weight after step 5: step 6 must report the failure.
    def grab(flow, iteration):
        holder["flow"] = flow

    def poison_weight(ev) -> None:
        if ev.phase == "train" and ev.iteration == 5:
            with torch.no_grad():
                next(iter(holder["flow"].parameters())).fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match=r"iteration 6\b") as info:
        train(TINY_FLOW, splits, _cfg(), progress=poison_weight, on_validate=grab)
    assert info.value.iteration == 6


def test_huge_learning_rate_diverges_with_a_clear_error() -> None:
    splits = _splits(n=200)
    with pytest.raises(TrainingDiverged, match=r"diverged at iteration \d+") as info:
        train(
            {**TINY_FLOW, "dtype": "float32"},
            splits,
            _cfg(lr=1e12, iterations=200, val_every=1000),
        )
    assert 1 <= info.value.iteration <= 200


def test_progress_events_carry_the_documented_fields() -> None:
    events = []
    train(TINY_FLOW, _splits(), _cfg(iterations=10, val_every=5), progress=events.append)
    phases = [e.phase for e in events]
    assert phases[0] == "validate" and phases[-1] == "done"
    train_events = [e for e in events if e.phase == "train"]
    assert [e.iteration for e in train_events] == list(range(1, 11))
    last = train_events[-1]
    assert last.total == 10 and last.surrogate_loss is not None
    assert last.seconds_per_iteration > 0 and last.eta_s == pytest.approx(0.0)
    assert last.val_nll is not None and math.isfinite(last.val_nll)
    assert last.epoch == pytest.approx(10 / (420 // 32))
    assert set(last.to_dict()) >= {
        "iteration",
        "total",
        "epoch",
        "surrogate_loss",
        "val_nll",
        "cg_iterations",
        "seconds_per_iteration",
        "eta_s",
    }


def test_early_stopping_stops_and_keeps_the_best_model() -> None:
    splits = _splits()
    # lr 1e-9 cannot move val NLL by min_delta=1e-3: with patience 2 the run stops at the
    # second validation after the start, and the best model is the starting one.
    cfg = _cfg(
        iterations=400,
        val_every=3,
        lr=1e-9,
        early_stopping_patience=2,
        early_stopping_min_delta=1e-3,
    )
    res = train(TINY_FLOW, splits, cfg)
    assert res.stopped_early and res.iterations_run == 6
    assert res.best_iteration == 0
    assert res.metrics["val_nll"] == pytest.approx(res.history[0]["val_nll"], abs=1e-8)


def test_schedules() -> None:
    cos = _Schedule(TrainConfig(lr=1.0, schedule="cosine", iterations=100), 100)
    assert cos.lr(0) == pytest.approx(1.0) and cos.lr(50) == pytest.approx(0.5)
    assert cos.lr(100) == pytest.approx(0.0, abs=1e-12)
    plat = _Schedule(TrainConfig(lr=1.0, schedule="plateau", plateau_patience=2), 100)
    for bad, expected in [(1, 1.0), (2, 0.1), (3, 0.1), (4, 0.01), (9, 0.01)]:
        plat.on_validation(bad)
        assert plat.lr(0) == pytest.approx(expected)
    warm = _Schedule(TrainConfig(lr=1.0, schedule="cosine", warmup_iterations=10), 100)
    assert warm.lr(0) == pytest.approx(0.1) and warm.lr(4) == pytest.approx(0.5 * cos.lr(4))
    assert warm.lr(9) == pytest.approx(cos.lr(9)) and warm.lr(50) == pytest.approx(0.5)


def test_evaluate_nll_matches_log_prob_in_batches() -> None:
    from cpflow import FlowConfig

    flow = CPFlow(FlowConfig(dim=3, blocks=2, hidden=8, depth=2, dtype="float64"))
    x = torch.randn(70, 3, dtype=torch.float64)
    nll, err = evaluate_nll(flow, x, method="exact", batch_size=16)
    assert err is None
    with torch.no_grad():
        direct = -float(flow.log_prob(x, method="exact").mean())
    assert nll == pytest.approx(direct, abs=1e-10)


def test_epochs_budget() -> None:
    assert TrainConfig(epochs=3, batch_size=32).total_iterations(420) == 3 * 13
    with pytest.raises(ValueError):
        TrainConfig(iterations=None, epochs=None)


def test_training_objective_choice() -> None:
    auto = TrainConfig()
    assert auto.loss_method(2) == "exact" and auto.loss_method(3) == "surrogate"
    assert TrainConfig(loss="surrogate").loss_method(2) == "surrogate"
    assert TrainConfig(loss="exact").loss_method(30) == "exact"
    events = []
    res = train(TINY_FLOW, _splits(), _cfg(iterations=6, loss="exact"), progress=events.append)
    assert res.metrics["train_loss"] == "exact"
    # No CG runs when training on the exact log-det; the surrogate path reports its iterations.
    assert all(e.cg_iterations is None for e in events if e.phase == "train")
    events = []
    res = train(TINY_FLOW, _splits(), _cfg(iterations=6, loss="surrogate"), progress=events.append)
    assert res.metrics["train_loss"] == "surrogate"
    assert all(e.cg_iterations >= 1 for e in events if e.phase == "train")


def test_whitening_standardisation_is_fitted_on_the_train_split() -> None:
    splits = _splits(dim=3)
    mix = np.array([[1.0, 0.0, 0.0], [0.9, 0.3, 0.0], [-0.5, 0.2, 0.4]], dtype=np.float32)
    splits.train, splits.val, splits.test = (
        a @ mix.T for a in (splits.train, splits.val, splits.test)
    )
    res = train({**TINY_FLOW, "standardization": "whiten"}, splits, _cfg(iterations=4))
    layer = res.flow.standardization
    cov = np.cov(splits.train.astype(np.float64), rowvar=False, bias=True)
    fitted = (layer.chol @ layer.chol.T).numpy()
    # The only change to the covariance is the documented 1e-6 relative ridge on the diagonal.
    np.testing.assert_allclose(fitted, cov + np.diag(np.diag(cov)) * 1e-6, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.mean.numpy(), splits.train.mean(0), rtol=1e-6)
    assert math.isfinite(res.metrics["test_nll"])
