"""The API's list of built-in data sets agrees with what the training package can load.

The service does not import ``training`` (it enqueues by dotted path), so it keeps its own
table of names and dimensions; this test is what keeps the two from drifting apart.
"""

from __future__ import annotations

import pytest

from service.job_schemas import BUILTIN_DATASETS


def test_every_training_data_set_is_offered() -> None:
    from training.datasets import SKLEARN_DATASETS, TOY_DATASETS

    offered = set(BUILTIN_DATASETS)
    assert set(TOY_DATASETS) <= offered
    assert {f"sklearn:{n}" for n in SKLEARN_DATASETS} <= offered
    assert len(offered) == len(TOY_DATASETS) + len(SKLEARN_DATASETS)  # nothing extra


@pytest.mark.parametrize("name", sorted(n for n in BUILTIN_DATASETS if ":" not in n))
def test_toy_set_loads_with_the_declared_dimension(name: str) -> None:
    from training.datasets import load_dataset

    splits = load_dataset(name, num_samples=200)
    assert splits.train.shape[1] == BUILTIN_DATASETS[name]


def test_sklearn_dimensions_match_the_source() -> None:
    """Read straight from scikit-learn (the training loader may only dequantise, not drop)."""
    from sklearn import datasets as skd

    for name, dim in BUILTIN_DATASETS.items():
        if name.startswith("sklearn:"):
            loader = getattr(skd, f"load_{name.split(':', 1)[1]}")
            assert loader().data.shape[1] == dim, name


def test_job_presets_are_training_presets_that_fit_any_data() -> None:
    """The presets a job may name exist in training/presets.py and take any data set (the
    image and paper-table presets need files a job cannot name)."""
    from service.job_schemas import JOB_PRESETS
    from training.presets import PRESETS
    from training.recipes import AUTO

    assert AUTO in JOB_PRESETS
    for name in set(JOB_PRESETS) - {AUTO}:
        assert PRESETS[name].datasets is None, name
    assert {n for n, p in PRESETS.items() if p.datasets is None} <= set(JOB_PRESETS)
