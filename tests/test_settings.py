"""Settings of the service's process kinds (service/settings.py): the job queue's JobSettings
read from the environment and checked, one default for exact_max_dim wherever it is a setting,
and an object store whose cache folder comes from the caller's settings, not the environment."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from pydantic import ValidationError

from cpflow import FlowConfig
from cpflow.config import EXACT_MAX_DIM
from model_store import ModelStore, StoreBackend, open_store
from model_store.object_store import DEFAULT_CACHE_DIR, ObjectModelStore
from service import queue
from service.settings import JobSettings, Settings
from training.config import TrainConfig


def test_job_settings_from_environment(monkeypatch) -> None:
    assert JobSettings().queue_name == "cpflow-training"  # the documented defaults
    assert (JobSettings().job_lease_s, JobSettings().job_heartbeat_s) == (60.0, 5.0)
    monkeypatch.setenv("CPFLOW_QUEUE_NAME", "gpu-jobs")
    monkeypatch.setenv("CPFLOW_JOB_LEASE_S", "12.5")
    monkeypatch.setenv("CPFLOW_JOB_HEARTBEAT_S", "0.5")
    got = JobSettings()
    assert (got.queue_name, got.job_lease_s, got.job_heartbeat_s) == ("gpu-jobs", 12.5, 0.5)
    monkeypatch.setenv("CPFLOW_QUEUE_NAME", "")  # empty means unset
    assert JobSettings().queue_name == "cpflow-training"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("CPFLOW_JOB_LEASE_S", "0"), ("CPFLOW_JOB_HEARTBEAT_S", "-1"), ("CPFLOW_JOB_LEASE_S", "x")],
)
def test_job_settings_refuse_bad_values(monkeypatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=variable.removeprefix("CPFLOW_").lower()):
        JobSettings()


def test_the_queue_uses_the_documented_settings_class() -> None:
    assert queue.JobSettings is JobSettings
    defaults = JobSettings()
    assert queue.DEFAULT_QUEUE_NAME == defaults.queue_name
    assert (queue.DEFAULT_LEASE_S, queue.DEFAULT_HEARTBEAT_S) == (
        defaults.job_lease_s,
        defaults.job_heartbeat_s,
    )


def test_exact_max_dim_has_one_default() -> None:
    """The library, the trainer and the service resolve method "auto" at the same dimension
    unless one is configured otherwise."""
    assert FlowConfig(dim=2).exact_max_dim == EXACT_MAX_DIM
    assert TrainConfig.model_fields["exact_max_dim"].default == EXACT_MAX_DIM
    assert Settings().exact_max_dim == EXACT_MAX_DIM


def test_object_store_cache_comes_from_the_caller_not_the_environment(
    monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CPFLOW_CACHE_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    given = open_store("s3://bucket/prefix", tmp_path / "given")
    assert isinstance(given, ObjectModelStore) and given.root == tmp_path / "given"
    default = open_store("s3://bucket/prefix")
    assert isinstance(default, ObjectModelStore) and default.root == DEFAULT_CACHE_DIR
    assert Settings().cache_dir == Path(tmp_path / "from-env")  # the service's setting reads it
    assert Settings(cache_dir=tmp_path / "c").cache_dir == tmp_path / "c"


def test_both_backends_offer_the_store_interface() -> None:
    """Every operation of StoreBackend exists on the folder store and the object store with the
    interface's parameters (mypy checks the types; this checks the names at run time)."""
    operations = [
        name
        for name, member in vars(StoreBackend).items()
        if callable(member) and not name.startswith("_")
    ]
    assert {"load", "publish", "resolve", "list_models"} <= set(operations)
    for backend in (ModelStore, ObjectModelStore):
        for name in operations:
            want = list(inspect.signature(getattr(StoreBackend, name)).parameters)
            got = list(inspect.signature(getattr(backend, name)).parameters)
            assert got == want, f"{backend.__name__}.{name}{got} != StoreBackend.{name}{want}"
