"""cpflow-train end to end: a tiny run into a temporary store, and clear failures."""

from __future__ import annotations

import json

import pytest
import torch

from model_store import ModelStore
from training.cli import main
from training.plots import PNG_MAGIC


def test_cli_trains_and_publishes_a_loadable_model(tmp_path, capsys) -> None:
    store_dir = tmp_path / "store"
    rc = main(
        [
            "--dataset",
            "wishart_gaussian:2",
            "--name",
            "ot-demo",
            "--preset",
            "gaussian_ot",
            "--iterations",
            "6",
            "--num-samples",
            "600",
            "--hidden",
            "8",
            "--depth",
            "2",
            "--store-dir",
            str(store_dir),
            "--quiet",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["name"] == "ot-demo" and out["version"] == 1
    metrics = out["metrics"]
    assert metrics["method"] == "exact"
    store = ModelStore(store_dir)
    loaded = store.load("ot-demo")
    # Options override the preset; the preset fills the rest.
    cfg = loaded.flow.config
    assert (cfg.potential.hidden, cfg.potential.depth, cfg.blocks, cfg.actnorm) == (8, 2, 1, False)
    training = loaded.manifest["training"]
    assert training["dataset"] == "wishart_gaussian:2" and len(training["sha256"]) == 64
    assert training["config"]["iterations"] == 6 and training["iterations_run"] == 6
    assert training["wall_time_s"] > 0 and training["parameter_count"] > 0
    assert training["job_id"] is None and training["preset"] == "gaussian_ot"
    # An OT run records how far its map is from the closed-form optimum.
    from training.ot import make_problem

    assert training["ot"]["w2_squared_optimum"] == pytest.approx(make_problem(2).w2_squared)
    assert training["ot"]["final_transport_cost"] > 0 and training["ot"]["final_kl"] > -0.5
    # The published test NLL is the loaded model's exact NLL on the same test split.
    from training.pipeline import load_splits

    splits = load_splits("wishart_gaussian:2", num_samples=600)
    x = torch.as_tensor(splits.test)
    with torch.no_grad():
        direct = -float(loaded.flow.log_prob(x, method="exact").mean())
    assert metrics["test_nll"] == pytest.approx(direct, abs=1e-4)  # float32, batch order
    names = {
        p if isinstance(p, str) else p.get("filename", p.get("name"))
        for p in loaded.manifest["plots"]
    }
    figures = ("training_curve.png", "density.png", "potential.png", "ot_transport_vs_kl.png")
    assert set(figures) <= names
    for name in figures:
        assert store.plot_path("ot-demo", 1, name).read_bytes().startswith(PNG_MAGIC)


def test_cli_no_plots_and_second_version(tmp_path, capsys) -> None:
    args = [
        "--dataset",
        "wishart_gaussian:3",
        "--name",
        "m",
        "--iterations",
        "3",
        "--blocks",
        "1",
        "--hidden",
        "4",
        "--depth",
        "1",
        "--num-samples",
        "300",
        "--store-dir",
        str(tmp_path),
        "--no-plots",
        "--quiet",
    ]
    assert main(args) == 0 and main(args) == 0
    store = ModelStore(tmp_path)
    assert store.versions("m") == [1, 2]
    assert store.manifest("m", 2)["plots"] == []


def test_cli_reports_divergence_and_bad_presets(tmp_path, capsys) -> None:
    rc = main(
        [
            "--dataset",
            "wishart_gaussian:2",
            "--name",
            "x",
            "--lr",
            "1e12",
            "--iterations",
            "200",
            "--val-every",
            "1000",
            "--num-samples",
            "300",
            "--store-dir",
            str(tmp_path),
            "--quiet",
            "--no-plots",
        ]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "diverged at iteration" in err
    assert ModelStore(tmp_path).list_models() == []  # nothing published
    rc = main(
        [
            "--dataset",
            "sklearn:wine",
            "--name",
            "x",
            "--preset",
            "tabular",
            "--store-dir",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert rc == 1 and "covers the data sets" in capsys.readouterr().err


def test_cli_store_dir_defaults_to_the_environment(tmp_path, monkeypatch) -> None:
    from training.cli import build_parser

    monkeypatch.setenv("CPFLOW_STORE_DIR", str(tmp_path / "env-store"))
    assert build_parser().parse_args(["--name", "a"]).store_dir == str(tmp_path / "env-store")
    monkeypatch.delenv("CPFLOW_STORE_DIR")
    assert build_parser().parse_args(["--name", "a"]).store_dir == "./var/store"


def test_cli_preset_without_dataset_trains_on_the_presets_default(tmp_path, capsys) -> None:
    # `--preset gaussian_ot` alone: the preset names its data set (wishart_gaussian:2)
    args = ["--preset", "gaussian_ot", "--name", "ot", "--iterations", "2", "--hidden", "4"]
    args += ["--depth", "1", "--num-samples", "300", "--store-dir", str(tmp_path), "--no-plots"]
    assert main([*args, "--quiet"]) == 0
    assert ModelStore(tmp_path).manifest("ot")["training"]["dataset"] == "wishart_gaussian:2"
    capsys.readouterr()
    # a preset without a default data set is a clear error, and nothing is published
    assert main(["--preset", "tabular", "--name", "tab", "--store-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cpflow-train: error:") and "names no default" in err
    assert not (tmp_path / "tab").exists()


def _tiny_run(
    tmp_path, name: str, *extra: str, dim: int = 3, iterations: int = 3, blocks: int = 1
):
    """cpflow-train arguments for a seconds-long run on a small Wishart Gaussian, no plots."""
    args = [
        "--dataset",
        f"wishart_gaussian:{dim}",
        "--name",
        name,
        "--iterations",
        str(iterations),
    ]
    args += ["--blocks", str(blocks), "--hidden", "4", "--depth", "1", "--num-samples", "300"]
    return args + ["--store-dir", str(tmp_path), "--no-plots", "--quiet", *extra]


@pytest.mark.parametrize(("loss", "expected"), [(None, "exact"), ("surrogate", "surrogate")])
def test_cli_loss_option_reaches_the_trainer(tmp_path, loss, expected) -> None:
    assert main(_tiny_run(tmp_path, "m", *(["--loss", loss] if loss else []))) == 0
    # d = 3: the auto recipe picks the exact log-det; --loss surrogate overrides it.
    assert ModelStore(tmp_path).manifest("m", 1)["training"]["metrics"]["train_loss"] == expected


def test_cli_whitening_standardization(tmp_path) -> None:
    assert main(_tiny_run(tmp_path, "w", "--standardization", "whiten")) == 0
    loaded = ModelStore(tmp_path).load("w")
    assert loaded.flow.config.standardization == "whiten"
    layer = loaded.flow.standardization
    # A real whitening: the stored Cholesky factor has off-diagonal entries (correlated data).
    assert float(layer.chol.tril(-1).abs().max()) > 1e-3


def test_cli_init_gain_reaches_the_blocks(tmp_path) -> None:
    args = _tiny_run(tmp_path, "g", "--init-gain", "0.05", dim=2, iterations=1, blocks=2)
    assert main(args) == 0
    loaded = ModelStore(tmp_path).load("g")
    assert loaded.flow.config.init_gain == 0.05
    # one Adam step (lr 1e-3 here at most) moves w1 by ~lr: the gain is still ~0.05, not log 2
    gain = float(loaded.flow.blocks()[0].coefficients()[1].detach())
    assert 0.04 < gain < 0.06


def test_cli_radial_units_reach_the_blocks_and_survive_the_store(tmp_path) -> None:
    args = _tiny_run(tmp_path, "r", "--radial-units", "6", dim=2, iterations=2, blocks=2)
    assert main(args) == 0
    loaded = ModelStore(tmp_path).load("r")
    assert loaded.flow.config.potential.radial_units == 6
    assert all(b.radial is not None and b.radial.units == 6 for b in loaded.flow.blocks())
    x = torch.randn(5, 2)
    lp = loaded.flow.log_prob(x)
    assert lp.shape == (5,) and torch.isfinite(lp).all()


def test_cli_prints_absolute_store_paths_and_says_when_it_creates_a_store(
    tmp_path, capsys, monkeypatch
) -> None:
    """Run from another folder with a relative store: the summary's path is absolute, and the
    first publish (which creates the store) says where it went and how a service finds it."""
    monkeypatch.chdir(tmp_path)
    args = [
        "--dataset", "wishart_gaussian:2", "--name", "m", "--iterations", "2", "--blocks", "1",
        "--hidden", "4", "--depth", "1", "--num-samples", "200", "--store-dir", "rel/store",
        "--no-plots", "--quiet",
    ]  # fmt: skip
    store = (tmp_path / "rel" / "store").resolve()
    assert main(args) == 0
    first = capsys.readouterr()
    assert json.loads(first.out)["path"] == str(store / "m" / "1")
    assert f"created a new model store at {store}" in first.err
    assert f"CPFLOW_STORE_DIR={store}" in first.err
    assert main(args) == 0
    second = capsys.readouterr()
    assert json.loads(second.out)["path"] == str(store / "m" / "2")
    assert "created a new model store" not in second.err


def test_cli_names_the_closest_preset_and_data_set(tmp_path, capsys) -> None:
    """A mistyped preset or built-in data set is refused with the name it was likely meant
    to be, before anything trains."""
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "two_moons", "--preset", "toyy", "--name", "x"])
    assert exit_info.value.code == 2
    assert "unknown preset 'toyy' (did you mean 'toy'?)" in capsys.readouterr().err
    store = str(tmp_path / "store")
    rc = main(["--dataset", "two_moon", "--name", "x", "--store-dir", store, "--quiet"])
    assert rc != 0
    assert "unknown data set 'two_moon' (did you mean 'two_moons'?)" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_cli_time_budget_shows_in_help_replaces_iterations_and_reaches_the_trainer(
    tmp_path, capsys
) -> None:
    from training.cli import build_parser

    text = " ".join(build_parser().format_help().split())  # unwrapped
    assert "--time-budget SECONDS" in text and "default: none, the budget is iterations" in text
    args = _tiny_run(tmp_path, "t", "--time-budget", "3")
    assert main(args) == 2  # _tiny_run names --iterations too
    assert "--time-budget replaces --iterations" in capsys.readouterr().err
    for bad in ("0", "-1", "soon"):
        with pytest.raises(SystemExit):
            main(["--dataset", "two_moons", "--name", "t", "--time-budget", bad])
        assert "positive number of seconds" in capsys.readouterr().err
    i = args.index("--iterations")
    assert main(args[:i] + args[i + 2 :] + ["--time-budget", "3"]) == 0
    training = ModelStore(tmp_path).manifest("t", 1)["training"]
    assert training["config"]["time_budget_s"] == 3.0 and training["config"]["iterations"] is None
    assert training["iterations_run"] >= 1 and "plan" in training["time_budget"]
