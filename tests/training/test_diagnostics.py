"""Held-out diagnostics: their numbers against independent references (scipy's Gaussian and
chi-square), chunking within the memory budget, the figures' titles and marks, and the
validation interval that gives the training curve its points."""

from __future__ import annotations

import types

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from scipy import stats

from cpflow import CPFlow, FlowConfig
from training import plots
from training.config import VALIDATION_POINTS, TrainConfig
from training.diagnostics import (
    Heldout,
    calibration_qq,
    heldout_rows,
    heldout_samples,
    heldout_scores,
)
from training.trainer import curve_points, train

MEAN = np.array([1.0, 2.0, 3.0, 4.0])
STD = np.array([2.0, 1.0, 0.5, 3.0])


@pytest.fixture
def gaussian_flow() -> CPFlow:
    """N(MEAN, diag(STD^2)) as a CP-Flow: standardisation then one block at the identity
    (no ActNorm, the ICNN term's weight 1e-6; z = (x - MEAN) / STD to about 1e-7)."""
    torch.manual_seed(0)
    flow = CPFlow(FlowConfig(dim=4, blocks=1, actnorm=False, init_gain=1e-6, dtype="float64"))
    flow.set_standardization(torch.as_tensor(MEAN), torch.as_tensor(STD))
    return flow.eval()


def _rows(n: int, scale: float = 1.0, seed: int = 0) -> np.ndarray:
    return MEAN + scale * STD * np.random.default_rng(seed).normal(size=(n, 4))


def test_qq_points_of_a_gaussian_model_lie_on_the_diagonal(gaussian_flow) -> None:
    scores = heldout_scores(gaussian_flow, Heldout(_rows(4000), None, "test"))
    expected, observed = calibration_qq(scores.sq_norms, 4)
    np.testing.assert_allclose(expected, stats.chi2(4).ppf((np.arange(4000) + 0.5) / 4000))
    # On the diagonal up to sampling noise: the chi-square CDF of each sorted point is within
    # the Kolmogorov-Smirnov 0.1% bound (1.95 / sqrt(n)) of its plotting position.
    positions = (np.arange(4000) + 0.5) / 4000
    assert np.max(np.abs(stats.chi2(4).cdf(observed) - positions)) < 1.95 / np.sqrt(4000)
    inner = slice(200, 3800)
    # Too narrow a model (data 1.5x wider): |f(x)|^2 grows by 2.25, far off the diagonal.
    wide = heldout_scores(gaussian_flow, Heldout(_rows(4000, scale=1.5), None, "test"))
    _, observed_wide = calibration_qq(wide.sq_norms, 4)
    ratio = np.median(observed_wide[inner] / expected[inner])
    assert ratio == pytest.approx(2.25, rel=0.1)


def test_heldout_scores_match_scipy_and_are_chunked(gaussian_flow, monkeypatch) -> None:
    rows = _rows(300, seed=1)
    reference = stats.multivariate_normal(MEAN, np.diag(STD**2)).logpdf(rows)
    whole = heldout_scores(gaussian_flow, Heldout(rows, None, "test"))
    np.testing.assert_allclose(whole.log_prob, reference, atol=1e-5)
    np.testing.assert_allclose(whole.sq_norms, (((rows - MEAN) / STD) ** 2).sum(1), rtol=1e-5)
    assert whole.method == "exact"
    from training.diagnostics import chunk_rows

    monkeypatch.setenv("CPFLOW_EVAL_MEMORY_MB", "0.02")
    assert chunk_rows(gaussian_flow, "exact") < 100  # several chunks for 300 rows
    chunked = heldout_scores(gaussian_flow, Heldout(rows, None, "test"))
    np.testing.assert_allclose(chunked.log_prob, whole.log_prob, rtol=1e-12, atol=1e-12)
    samples = heldout_samples(gaussian_flow, Heldout(rows, None, "test"))
    assert samples.shape == rows.shape
    # Samples of the Gaussian model have its mean and spread (300 rows: 4 standard errors).
    assert np.all(np.abs(samples.mean(0) - MEAN) < 4 * STD / np.sqrt(300))


def test_heldout_rows_prefer_test_then_val_and_are_capped() -> None:
    both = types.SimpleNamespace(train=_rows(50), val=_rows(40), test=_rows(30, seed=3))
    got = heldout_rows(both, 20)
    assert got is not None and got.split == "test" and got.rows.shape == (20, 4)
    np.testing.assert_array_equal(got.rows, both.test[:20])
    no_test = types.SimpleNamespace(train=_rows(50), val=_rows(40), test=None)
    got = heldout_rows(no_test, 1000)
    assert got is not None and got.split == "val" and len(got.rows) == 40
    assert heldout_rows(types.SimpleNamespace(train=_rows(5), val=None, test=None), 9) is None


def _figure_of(monkeypatch, draw) -> plt.Figure:
    """The matplotlib figure a plots function drew (its PNG encoding skipped)."""
    captured: list[plt.Figure] = []
    monkeypatch.setattr(plots, "_png", lambda fig: captured.append(fig) or b"")
    draw()
    return captured[0]


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_training_curve_one_axis_loss_title_and_kept_iteration(monkeypatch) -> None:
    history = [
        {"iteration": i, "val_nll": 3.0 - i / 100 + (i == 80) * 0.5, "train_nll": 3.1 - i / 100}
        for i in range(0, 101, 10)
    ]
    fig = _figure_of(
        monkeypatch,
        lambda: plots.training_curve(history, loss="surrogate", best_iteration=90),
    )
    (ax,) = fig.axes  # train and validation on one axis
    assert "surrogate loss" in ax.get_title()
    assert _legend(ax) == ["train NLL", "kept: iteration 90", "validation NLL"]
    fig = _figure_of(monkeypatch, lambda: plots.training_curve(history, loss="exact"))
    assert "exact NLL" in fig.axes[0].get_title() and "surrogate" not in fig.axes[0].get_title()
    # Without best_iteration the lowest validation NLL is marked.
    assert "kept: iteration 100" in _legend(fig.axes[0])


def test_training_curve_of_an_old_exact_run_draws_its_batch_nll(monkeypatch) -> None:
    history = [{"iteration": i, "val_nll": 2.0, "surrogate": 2.1} for i in (0, 5)]
    fig = _figure_of(monkeypatch, lambda: plots.training_curve(history, loss="exact"))
    assert any("mean batch NLL" in t for t in _legend(fig.axes[0]))
    fig = _figure_of(monkeypatch, lambda: plots.training_curve(history, loss="surrogate"))
    assert not any("train" in t for t in _legend(fig.axes[0]))  # its value is no NLL


def test_corner_plot_caps_wide_tables_and_says_so(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    data, samples = rng.normal(size=(1000, 10)), rng.normal(size=(150, 10))
    fig = _figure_of(monkeypatch, lambda: plots.corner_figure(data, samples))
    assert len(fig.axes) == plots.CORNER_COLUMNS**2
    assert "first 6 of 10 columns" in fig._suptitle.get_text()
    # The view is the held-out rows' robust range: a far outlier does not stretch it.
    data[0, 0] = 1e6
    fig = _figure_of(monkeypatch, lambda: plots.corner_figure(data[:, :4], samples[:, :4]))
    assert fig.axes[4].get_xlim()[1] < 10  # row 1, column 0: x1 on the x axis
    assert fig.axes[4].get_xlabel() == "" and fig.axes[12].get_xlabel() == "x1"


def test_calibration_and_histogram_figures_decode(gaussian_flow) -> None:
    from tests.training.test_plots import _decode

    pngs = plots.heldout_figures(gaussian_flow, Heldout(_rows(500), None, "val"))
    assert set(pngs) == {"calibration.png", "score_histogram.png", "corner.png"}
    for png in pngs.values():
        _decode(png)


def test_validation_interval_gives_at_least_twenty_points() -> None:
    for total in (1, 7, 20, 400, 401, 2000, 123_457):
        every = TrainConfig(iterations=total).validation_interval(total)
        validations = len({*range(0, total + 1, every), total})  # as Trainer.run validates
        assert validations >= min(VALIDATION_POINTS, total) + 1, (total, every)
    assert TrainConfig(val_every=7).validation_interval(400) == 7  # an explicit one is kept


def test_a_short_run_records_its_curve_points() -> None:
    x = np.random.default_rng(0).normal(size=(300, 2))
    splits = types.SimpleNamespace(train=x[:200], val=x[200:250], test=x[250:])
    events = []
    result = train(
        {"blocks": 1, "hidden": 4, "depth": 1},
        splits,
        {"iterations": 40, "batch_size": 32, "train_nll_points": 64},
        progress=events.append,
    )
    assert [h["iteration"] for h in result.history] == list(range(0, 41, 2))
    assert all(h["train_nll"] is not None for h in result.history)
    last = [e for e in events if e.phase == "validate"][-1]
    assert last.curve == [[h["iteration"], h["train_nll"], h["val_nll"]] for h in result.history]
    assert last.loss == "exact"


def test_curve_points_are_thinned_keeping_both_ends() -> None:
    history = [{"iteration": i, "val_nll": float(i), "train_nll": None} for i in range(1000)]
    points = curve_points(history, most=200)
    assert len(points) == 200 and points[0][0] == 0 and points[-1][0] == 999
    assert curve_points(history[:5]) == [[i, None, float(i)] for i in range(5)]


def test_image_and_conditional_models_get_their_diagnostics() -> None:
    from tests.helpers.flows import conditional_flow
    from tests.helpers.image_flows import random_image_flow

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 16, size=(40, 1, 4, 4))
    splits = types.SimpleNamespace(train=pixels, val=None, test=pixels, levels=16, shape=(1, 4, 4))
    heldout = heldout_rows(splits, 2000)
    assert heldout is not None and heldout.rows.shape == (40, 16)
    # Dequantised as the trainer scores images: (pixel + u) / levels, u in [0, 1).
    assert np.all(heldout.rows * 16 - pixels.reshape(40, 16) >= 0)
    assert np.all(heldout.rows * 16 - pixels.reshape(40, 16) < 1)
    image = random_image_flow((1, 4, 4), (1, 1), hidden=4, seed=3).eval()
    assert set(plots.heldout_figures(image, heldout)) == {"calibration.png", "score_histogram.png"}
    flow = conditional_flow().eval()
    rows = Heldout(rng.normal(size=(50, flow.dim)), rng.normal(size=(50, 1)), "test")
    with torch.no_grad():
        direct = flow.log_prob(torch.as_tensor(rows.rows, dtype=torch.float32),
                               torch.as_tensor(rows.contexts, dtype=torch.float32))  # fmt: skip
    scores = heldout_scores(flow, rows)
    np.testing.assert_allclose(scores.log_prob, direct.double().numpy(), rtol=1e-6, atol=1e-6)
    assert "corner.png" in plots.heldout_figures(flow, rows)
