"""Conditional data sets (true densities, context columns), train loop and CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cpflow import FlowConfig
from model_store import ModelStore
from training.cli import main
from training.config import TrainConfig
from training.datasets.conditional import (
    conditional_entropy,
    conditional_toy_log_density,
    load_conditional_array,
    make_conditional_toy,
    sample_conditional_toy,
    split_context_columns,
)
from training.datasets.errors import DatasetError
from training.trainer import train


@pytest.mark.parametrize("name,c", [("mog1d", 0.2), ("mog1d", 0.7), ("banana", -0.6)])
def test_true_density_integrates_to_one_and_matches_samples(name, c):
    if name == "mog1d":
        g = np.linspace(-8, 8, 40_001)
        p = np.exp(conditional_toy_log_density(name, g[:, None], c))
        assert abs(np.trapezoid(p, g) - 1.0) < 1e-8
    else:
        g = np.linspace(-9, 9, 901)
        xx, yy = np.meshgrid(g, g)
        pts = np.stack([xx.ravel(), yy.ravel()], 1)
        p = np.exp(conditional_toy_log_density(name, pts, c)).reshape(xx.shape)
        assert abs(np.trapezoid(np.trapezoid(p, g, axis=1), g) - 1.0) < 1e-4
    # the entropy equals the Monte-Carlo mean of -log p on the sampler's draws (independent
    # check of sampler and density): 4 standard errors
    x = sample_conditional_toy(name, np.full(200_000, c), np.random.default_rng(0))
    nlp = -conditional_toy_log_density(name, x, c)
    se = nlp.std() / np.sqrt(len(nlp))
    assert abs(nlp.mean() - conditional_entropy(name, c)) < 4 * se


def test_mixing_weight_is_the_context():
    x = sample_conditional_toy("mog1d", np.full(50_000, 0.3), np.random.default_rng(1))
    assert abs((x[:, 0] < 0).mean() - 0.3) < 0.01  # components at -1.5 / +1.5, sd 0.5


def test_context_columns_from_csv(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(50, 4))
    path = tmp_path / "d.csv"
    np.savetxt(path, arr, delimiter=",", header="a,b,c,d", comments="")
    sp = load_conditional_array(path, "1,-1")
    assert sp.dim == 2 and sp.context_dim == 2 and sp.context_columns == [1, 3]
    x, c, _ = split_context_columns(arr, [0])
    assert np.array_equal(c[:, 0], arr[:, 0]) and np.array_equal(x, arr[:, 1:])
    for bad in ["7", "0,0", "0,1,2,3", "x", ""]:
        with pytest.raises(DatasetError):
            split_context_columns(arr, bad)


@pytest.mark.slow  # ~30 s idle, minutes on the shared 2-core box
def test_train_conditional_improves_and_learns_the_context():
    torch.manual_seed(0)
    sp = make_conditional_toy("mog1d", 3000, 0)
    cfg = FlowConfig(dim=1, context_dim=1, blocks=1, hidden=8, depth=2,
                                context_hidden=8)  # fmt: skip
    res = train(
        cfg, sp, TrainConfig(iterations=120, val_every=40, batch_size=128, lr=1e-2,
                             loss="exact", schedule="cosine", grad_clip=10.0)
    )  # fmt: skip
    # the marginal of x is an equal mixture: an unconditional fit can't beat ~1.70 nats; the
    # conditional entropy averaged over c in [0,1] is ~1.27. Require clear use of the context.
    assert res.metrics["test_nll"] < 1.55
    with torch.no_grad():  # mass left of 0 follows the mixing weight c
        lo = res.flow.sample(400, torch.tensor([[0.1]]))[0]
        hi = res.flow.sample(400, torch.tensor([[0.9]]))[0]
    assert (hi < 0).float().mean() - (lo < 0).float().mean() > 0.4


def test_cli_trains_file_data_into_the_store_with_context_columns(tmp_path):
    rng = np.random.default_rng(0)
    c = rng.uniform(0, 1, 300)
    x = sample_conditional_toy("mog1d", c, rng)
    path = tmp_path / "data.npy"
    np.save(path, np.concatenate([c[:, None], x], 1))
    rc = main(["--dataset", f"file:{path}", "--context-columns", "0", "--name", "m", "--quiet",
               "--store-dir", str(tmp_path / "store"), "--iterations", "5", "--blocks", "1",
               "--hidden", "4", "--depth", "2"])  # fmt: skip
    assert rc == 0
    man = ModelStore(tmp_path / "store").manifest("m")
    assert man["training"]["context_columns"] == [0]
    assert man["flow_config"]["potential"]["context_dim"] == 1 and man["dim"] == 1
    assert np.isfinite(man["training"]["metrics"]["test_nll"])
