"""The API's list of built-in data sets agrees with what the training package can load.

The service does not import ``training`` (it enqueues by dotted path), so it keeps its own
table of names and dimensions; this test is what keeps the two from drifting apart.
"""

from __future__ import annotations

import pytest

from service.job_schemas import BUILTIN_DATASETS


def test_every_toy_data_set_is_offered_with_dim_2() -> None:
    from training.datasets.toy import TOY_DATASETS

    for name in TOY_DATASETS:
        assert BUILTIN_DATASETS.get(name) == 2, name


@pytest.mark.parametrize("name", sorted(BUILTIN_DATASETS))
def test_builtin_loads_with_the_declared_dimension(name: str) -> None:
    datasets = pytest.importorskip("training.datasets")
    if not hasattr(datasets, "load_dataset"):
        pytest.skip("training.datasets.load_dataset has not landed yet")
    splits = datasets.load_dataset(name, num_samples=200 if "sklearn" not in name else None)
    assert splits.train.shape[1] == BUILTIN_DATASETS[name]
