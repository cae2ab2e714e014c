"""cpflow-train --context-columns: a conditional model p(x | c) from file data (or a conditional
toy), published with the context columns in its manifest; misuse is exit status 2 with a
message that says what to fix."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model_store import ModelStore
from training.cli import main

TINY = ["--iterations", "20", "--val-every", "10", "--blocks", "1", "--hidden", "8"]
TINY += ["--depth", "1", "--batch-size", "32", "--quiet"]


@pytest.fixture
def csv_path(tmp_path):
    """Columns a, c, b: the middle column is the context, x = (a, b) shifts with it."""
    rng = np.random.default_rng(0)
    c = rng.uniform(-1.0, 1.0, 200)
    x = rng.normal(size=(200, 2)) * 0.5 + c[:, None]
    path = tmp_path / "cond.csv"
    np.savetxt(path, np.column_stack([x[:, 0], c, x[:, 1]]), delimiter=",", header="a,c,b")
    return path


def test_context_columns_publish_a_conditional_model(tmp_path, csv_path, capsys) -> None:
    store_dir = tmp_path / "store"
    argv = ["--dataset", f"file:{csv_path}", "--context-columns", "1", "--name", "cond"]
    rc = main([*argv, "--store-dir", str(store_dir), "--seed", "3", "--lr", "0.01", *TINY])
    assert rc == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    assert out["name"] == "cond" and out["version"] == 1 and out["kind"] == "conditional"
    assert out["context_columns"] == [1] and out["context_dim"] == 1
    assert np.isfinite(out["metrics"]["test_nll"])

    loaded = ModelStore(store_dir).load("cond")
    training = loaded.manifest["training"]
    assert training["kind"] == "conditional" and training["dataset"] == f"file:{csv_path}"
    assert training["context_columns"] == [1] and training["context_dim"] == 1
    # The options reached the conditional config and trainer.
    cfg = loaded.flow.config
    assert (cfg.potential.kind, cfg.dim, cfg.context_dim) == ("picnn", 2, 1)
    assert (cfg.blocks, cfg.potential.hidden, cfg.potential.depth) == (1, 8, 1)
    trainer = training["config"]
    assert trainer["iterations"] == 20 and trainer["val_every"] == 10
    assert trainer["seed"] == 3 and trainer["lr"] == 0.01 and trainer["batch_size"] == 32
    # The stored model scores rows of x given their context.
    x = torch.tensor([[0.1, 0.2], [0.5, -0.3]])
    lp = loaded.flow.log_prob(x, torch.tensor([[0.3], [-0.4]]), method="exact")
    assert lp.shape == (2,) and torch.isfinite(lp).all()


def test_negative_index_and_conditional_toy(tmp_path, csv_path, capsys) -> None:
    store_dir = str(tmp_path / "store")
    rc = main(["--dataset", f"file:{csv_path}", "--context-columns", "-1", "--name", "neg"]
              + ["--store-dir", store_dir, *TINY])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["context_columns"] == [2]
    # A conditional toy is conditional by nature: no --context-columns needed.
    rc = main(["--dataset", "banana", "--num-samples", "300", "--name", "ban"]
              + ["--store-dir", store_dir, *TINY])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    manifest = ModelStore(store_dir).manifest("ban", 1)
    assert manifest["training"]["dataset"] == "banana"
    assert manifest["training"]["context_dim"] == 1 and manifest["dim"] == 2


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--dataset", "two_moons", "--context-columns", "1"], "file: data sets only"),
        (["--dataset", "mog1d", "--context-columns", "0"], "drop --context-columns"),
        (["--context-columns", "0", "--preset", "demo"], "file: data sets only"),
        (["--context-columns", "5"], "out of range"),
        (["--context-columns", "0,0"], "must not repeat"),
        (["--context-columns", "0,1,2"], "at least one column must remain"),
        (["--context-columns", "a"], "comma-separated integer"),
        (["--context-columns", "1", "--icnn", "dense"], "augmented"),
    ],
)
def test_misuse_is_exit_2_with_a_message(tmp_path, csv_path, capsys, extra, needle) -> None:
    argv = ["--name", "bad", "--store-dir", str(tmp_path / "store"), *TINY]
    if "--dataset" not in extra and "--preset" not in extra:
        argv += ["--dataset", f"file:{csv_path}"]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cpflow-train: error:") and needle in err
    assert not (tmp_path / "store" / "bad").exists()


def test_conditional_runs_take_every_trainer_option(tmp_path, csv_path, capsys) -> None:
    """One trainer: schedule, warm-up, early stopping and an epoch budget (refused while
    conditional models had a trainer of their own) reach a conditional run's config."""
    store_dir = tmp_path / "store"
    argv = ["--dataset", f"file:{csv_path}", "--context-columns", "1", "--name", "opts"]
    argv += ["--store-dir", str(store_dir), *TINY, "--schedule", "plateau", "--warmup", "3"]
    rc = main([*argv, "--early-stopping", "40", "--epochs", "2"])
    assert rc == 0, capsys.readouterr().err
    config = ModelStore(store_dir).manifest("opts")["training"]["config"]
    assert (config["schedule"], config["warmup_iterations"]) == ("plateau", 3)
    assert config["early_stopping_patience"] == 40 and config["epochs"] == 2


def test_whitening_is_refused_for_conditional_models() -> None:
    from pydantic import ValidationError

    from cpflow import FlowConfig

    with pytest.raises(ValidationError, match="per coordinate"):
        FlowConfig(dim=2, context_dim=1, standardization="whiten")
    with pytest.raises(ValidationError, match="no radial units"):
        FlowConfig(dim=2, context_dim=1, radial_units=4)
