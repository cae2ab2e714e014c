"""The auto recipe: what it chooses for small, large, high-dimensional and 2-D data, that
explicit options win, and that the CLI and job specs use it by default and record it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model_store import ModelStore
from training.pipeline import build_configs
from training.recipes import AUTO, WHITEN_MIN_ROWS_PER_COLUMN, WIDE_TABLE_DIM, auto_recipe


def _rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d))


def _values(recipe) -> dict:
    return {k: c["value"] for k, c in recipe.choices.items() if isinstance(c, dict)}


def test_small_tables_whiten_and_stop_early_large_tables_get_a_larger_flow() -> None:
    small = auto_recipe(_rows(300, 8))
    large = auto_recipe(_rows(20_000, 8))
    for recipe in (small, large):
        assert recipe.flow["standardization"] == "whiten"
        assert recipe.train["early_stopping_patience"] >= 1
        assert recipe.train["loss"] == "exact"
    assert small.flow["blocks"] < large.flow["blocks"]
    assert small.flow["hidden"] < large.flow["hidden"]
    assert large.train["val_every"] > small.train["val_every"]
    # every choice says why, and the rows and dimension it read
    assert all(c["why"] for k, c in small.choices.items() if k != "data")
    assert small.choices["data"] == {"rows": 300, "dim": 8}


def test_wide_tables_get_the_larger_flow_whatever_their_rows_and_wider_past_64_columns() -> None:
    narrow, wide, wider = (auto_recipe(_rows(300, d)) for d in (WIDE_TABLE_DIM - 1, 47, 100))
    large = auto_recipe(_rows(20_000, 8))
    assert (narrow.flow["blocks"], narrow.flow["hidden"]) == (2, 64)
    for key in ("blocks", "depth", "hidden"):
        assert wide.flow[key] == large.flow[key]
    assert wider.flow["hidden"] >= 200
    assert wide.train["val_every"] == narrow.train["val_every"]  # rows set the validations
    assert "47 columns >= " in wide.choices["hidden"]["why"]


def test_tables_with_too_few_rows_for_a_covariance_are_standardised_column_by_column() -> None:
    few = auto_recipe(_rows(WHITEN_MIN_ROWS_PER_COLUMN * 52 - 1, 52))
    enough = auto_recipe(_rows(WHITEN_MIN_ROWS_PER_COLUMN * 52, 52))
    assert (
        few.flow["standardization"] == "diagonal"
        and "too few" in few.choices["standardization"]["why"]
    )
    assert enough.flow["standardization"] == "whiten"


def test_high_dimensional_tables_train_on_the_cg_surrogate() -> None:
    assert auto_recipe(_rows(500, 30)).train["loss"] == "surrogate"
    assert auto_recipe(_rows(500, 16)).train["loss"] == "exact"


def test_two_dimensional_toys_get_the_toy_recipe_radial_units_only_for_rings() -> None:
    from training.datasets.toy import sample_toy

    rings = auto_recipe(sample_toy("rings", 20_000, seed=1))
    eight = auto_recipe(sample_toy("eight_gaussians", 20_000, seed=1))
    for recipe in (rings, eight):
        assert recipe.flow["blocks"] == 5 and recipe.train["lr"] == 0.02
    assert rings.flow["radial_units"] == 32 and rings.train["grad_clip"] == 1.0
    assert eight.flow["radial_units"] == 0 and "grad_clip" not in eight.train
    # a small 2-D table is a table, not a toy
    assert auto_recipe(_rows(300, 2)).flow["standardization"] == "whiten"


def test_conditional_data_keep_the_defaults() -> None:
    assert auto_recipe(None).flow == {} and auto_recipe(None).train == {}


def test_images_get_the_image_preset_for_their_shape() -> None:
    from training.presets import PRESETS

    digits = auto_recipe(None, image_shape=(1, 8, 8))
    preset = PRESETS["digits"]
    for key in ("input_shape", "blocks", "hidden", "depth"):
        assert digits.flow[key] == (list(preset.flow[key]) if key == "input_shape" else
                                    preset.flow[key])  # fmt: skip
    assert digits.train["lr"] == preset.train["lr"] and "iterations" not in digits.train
    assert "digits" in digits.choices["blocks"]["why"]
    other = auto_recipe(None, image_shape=(3, 16, 16))  # no preset: the same narrow potential
    assert other.flow["blocks"] == [2, 2, 2, 2] and other.flow["hidden"] == 16


def test_explicit_options_override_the_recipe() -> None:
    recipe = auto_recipe(_rows(300, 4))
    _, flow, cfg, _ = build_configs(
        preset=AUTO,
        dataset=None,
        recipe=recipe,
        flow_overrides={"blocks": 7, "standardization": "diagonal"},
        train_overrides={"lr": 0.1, "loss": "surrogate", "early_stopping_patience": None},
    )
    assert flow["blocks"] == 7 and flow["standardization"] == "diagonal"
    assert flow["depth"] == recipe.flow["depth"]
    assert cfg.lr == 0.1 and cfg.loss == "surrogate"
    # None is "not given": the recipe's value stays
    assert cfg.early_stopping_patience == recipe.train["early_stopping_patience"]
    with pytest.raises(ValueError, match="recipe"):
        build_configs(preset=AUTO, dataset=None)


def test_cli_defaults_to_auto_and_the_manifest_records_its_choices(tmp_path, capsys) -> None:
    from training.cli import main

    args = ["--dataset", "sklearn:iris", "--name", "iris", "--iterations", "3", "--hidden", "8"]
    rc = main([*args, "--store-dir", str(tmp_path), "--quiet", "--no-plots"])
    assert rc == 0, capsys.readouterr().err
    manifest = ModelStore(tmp_path).manifest("iris")
    training = manifest["training"]
    assert training["preset"] == "auto"
    auto = training["auto"]
    assert auto["choices"]["data"] == {"rows": training["num_train"], "dim": 4}
    assert auto["overridden"] == ["hidden"]
    # what it chose reached the model, except what the command line overrode
    potential = manifest["flow_config"]["potential"]
    assert manifest["flow_config"]["blocks"] == auto["choices"]["blocks"]["value"]
    assert manifest["flow_config"]["standardization"] == "whiten"
    assert potential["hidden"] == 8 and potential["depth"] == auto["choices"]["depth"]["value"]
    assert training["config"]["lr"] == auto["choices"]["lr"]["value"]
    assert json.loads(json.dumps(auto))


def test_job_specs_leave_the_recipe_its_choices() -> None:
    from service.job_schemas import JobSpec

    spec = JobSpec.model_validate(
        {
            "model_name": "m",
            "dataset": {"builtin": "sklearn:iris"},
            "model": {"hidden": 8},
            "training": {"lr": 0.01},
        }
    )
    assert spec.model.flow_kwargs() == {"hidden": 8, "symmetric_first": True, "actnorm": True,
                                        "dtype": "float32"}  # fmt: skip
    dumped = spec.model_dump(mode="json")
    assert dumped["model"]["blocks"] is None and dumped["training"]["schedule"] is None
    assert dumped["training"]["lr"] == 0.01


def test_a_job_without_model_options_trains_with_the_auto_recipe(tmp_path, monkeypatch) -> None:
    from service.job_schemas import JobSpec
    from training.jobs import execute_spec

    monkeypatch.setenv("CPFLOW_STORE_DIR", str(tmp_path))
    spec = JobSpec.model_validate(
        {
            "model_name": "job",
            "dataset": {"builtin": "sklearn:iris"},
            "training": {"iterations": 3},
            "plots": False,
        }
    )
    out = execute_spec(spec.model_dump(mode="json"))
    manifest = ModelStore(tmp_path).manifest("job", out["version"])
    auto = manifest["training"]["auto"]
    assert manifest["training"]["preset"] == "auto" and auto["overridden"] == []
    assert manifest["flow_config"]["blocks"] == auto["choices"]["blocks"]["value"]
    assert manifest["training"]["config"]["lr"] == auto["choices"]["lr"]["value"]
