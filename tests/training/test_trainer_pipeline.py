"""train_and_publish as the job worker calls it: splits or names, dict configs, a job id."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from model_store import ModelStore
from training.config import TrainConfig
from training.pipeline import train_and_publish
from training.trainer import TrainingCancelled


def _splits() -> SimpleNamespace:
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(300, 3)) @ np.array([[1, 0.5, 0], [0, 1, 0.3], [0, 0, 2]])).astype(
        np.float32
    )
    return SimpleNamespace(
        name="upload-1", train=x[:200], val=x[200:250], test=x[250:], sha256="f" * 64
    )


def test_publishes_the_training_summary(tmp_path) -> None:
    store = ModelStore(tmp_path)
    events = []
    pub = train_and_publish(
        _splits(),
        "job-model",
        store,
        flow_config={"blocks": 1, "hidden": 8, "depth": 1},
        train_config={"iterations": 5, "batch_size": 50, "val_every": 5},
        job_id="job-123",
        make_plots=True,
        progress=events.append,
    )
    assert pub.version == 1
    training = store.manifest("job-model")["training"]
    assert training["job_id"] == "job-123"
    assert training["dataset"] == "upload-1" and training["sha256"] == "f" * 64
    assert training["num_train"] == 200
    assert TrainConfig.model_validate(training["config"]).iterations == 5  # JSON round trip
    assert set(training["metrics"]) >= {"train_nll", "val_nll", "test_nll", "method"}
    assert training["seconds_per_iteration"] > 0
    assert [h["iteration"] for h in training["history"]] == [0, 5]
    # 3-D: the training curve and the held-out diagnostics are drawn.
    assert {
        p if isinstance(p, str) else p.get("filename", p.get("name"))
        for p in store.manifest("job-model")["plots"]
    } == {"training_curve.png", "corner.png", "calibration.png", "score_histogram.png"}
    assert events[-1].phase == "done"
    # The listing shows the real metrics.
    (row,) = store.list_models()
    assert row["metrics"]["test_nll"] == pytest.approx(training["metrics"]["test_nll"])


def test_cancelled_job_publishes_nothing(tmp_path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(TrainingCancelled):
        train_and_publish(
            _splits(),
            "never",
            store,
            {"blocks": 1, "hidden": 4, "depth": 1},
            {"iterations": 50},
            should_stop=lambda: True,
            make_plots=False,
        )
    assert store.list_models() == []


def test_unknown_trainer_option_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="learning_rate"):
        train_and_publish(_splits(), "x", ModelStore(tmp_path), {}, {"learning_rate": 0.1})
