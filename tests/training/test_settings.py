"""Training settings: what the environment configures, and that nothing else in training/
reads the environment."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from training.settings import TorchrunSettings, TrainingSettings, child_env

_VARS = (
    "CPFLOW_STORE_DIR",
    "CPFLOW_STORE_URL",
    "CPFLOW_CACHE_DIR",
    "CPFLOW_DEVICE",
    "CPFLOW_WORKER_TORCH_THREADS",
    "CPFLOW_DATA_DIR",
    "WORLD_SIZE",
    "LOCAL_RANK",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_without_an_environment(clean_env) -> None:
    s = TrainingSettings()
    assert (s.store_dir, s.store_url, s.cache_dir, s.device) == (None, None, None, None)
    assert s.worker_torch_threads is None and s.data_dir is None
    assert s.store_location() is None
    t = TorchrunSettings()
    assert t.world_size == 1 and t.local_rank is None


def test_every_variable_is_read(clean_env, tmp_path) -> None:
    clean_env.setenv("CPFLOW_STORE_DIR", str(tmp_path / "store"))
    clean_env.setenv("CPFLOW_CACHE_DIR", str(tmp_path / "cache"))
    clean_env.setenv("CPFLOW_DEVICE", "cuda:1")
    clean_env.setenv("CPFLOW_WORKER_TORCH_THREADS", "3")
    clean_env.setenv("CPFLOW_DATA_DIR", str(tmp_path / "data"))
    clean_env.setenv("WORLD_SIZE", "4")
    clean_env.setenv("LOCAL_RANK", "2")
    s = TrainingSettings()
    assert s.store_dir == tmp_path / "store" and s.cache_dir == tmp_path / "cache"
    assert s.device == "cuda:1" and s.worker_torch_threads == 3
    assert s.data_dir == tmp_path / "data"
    assert s.store_location() == str(tmp_path / "store")
    clean_env.setenv("CPFLOW_STORE_URL", "s3://bucket/models")
    assert TrainingSettings().store_location() == "s3://bucket/models"  # the URL wins
    t = TorchrunSettings()
    assert (t.world_size, t.local_rank) == (4, 2)


def test_empty_values_are_unset(clean_env) -> None:
    clean_env.setenv("CPFLOW_DEVICE", "")
    clean_env.setenv("CPFLOW_WORKER_TORCH_THREADS", "")
    s = TrainingSettings()
    assert s.device is None and s.worker_torch_threads is None


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("CPFLOW_DEVICE", "gpu", "auto, cpu, cuda or cuda:N"),
        ("CPFLOW_WORKER_TORCH_THREADS", "0", "greater than or equal to 1"),
        ("CPFLOW_WORKER_TORCH_THREADS", "many", "integer"),
    ],
)
def test_bad_values_are_refused_with_the_reason(clean_env, name, value, match) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ValidationError, match=match):
        TrainingSettings()


def test_the_cli_names_a_bad_variable_and_exits_2(clean_env, capsys) -> None:
    from training.cli import main

    clean_env.setenv("CPFLOW_DEVICE", "gpu")
    assert main(["--dataset", "two_moons", "--name", "m"]) == 2
    assert "CPFLOW_DEVICE" in capsys.readouterr().err


def test_child_env_adds_to_this_environment(clean_env) -> None:
    clean_env.setenv("CPFLOW_DEVICE", "cpu")
    env = child_env(OMP_NUM_THREADS="1")
    assert env["OMP_NUM_THREADS"] == "1" and env["CPFLOW_DEVICE"] == "cpu"


def test_only_the_settings_module_reads_the_environment() -> None:
    root = Path(__file__).resolve().parents[2] / "training"
    readers = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "settings.py" and path.parent == root:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
            if name in ("environ", "getenv", "environb"):
                readers.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    assert readers == []
