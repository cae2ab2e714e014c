"""Settings of the training processes (cpflow-train, the job function a worker runs, the ranks
of a torchrun group), read from the environment by pydantic-settings.

This module is the only place in ``training`` that reads environment variables: the
``CPFLOW_*`` ones below, and torchrun's ``WORLD_SIZE`` / ``LOCAL_RANK`` (see
:class:`TorchrunSettings`). Build a settings object where it is needed (they are cheap) rather
than at import, so tests can set the environment first.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["TorchrunSettings", "TrainingSettings", "child_env"]


class TrainingSettings(BaseSettings):
    """What a training process can be configured with (``CPFLOW_`` prefix, empty = unset)."""

    model_config = SettingsConfigDict(
        env_prefix="CPFLOW_", env_ignore_empty=True, extra="ignore", frozen=True
    )

    store_dir: Path | None = Field(
        default=None,
        description="Model store root; cpflow-train falls back to ./var/store, a job to the "
        "store named in its spec.",
    )
    store_url: str | None = Field(
        default=None,
        description="Model store as s3://bucket/prefix or file:///path; wins over store_dir.",
    )
    cache_dir: Path | None = Field(
        default=None, description="Local cache of an object store's files (jobs)."
    )
    device: str | None = Field(
        default=None,
        description="auto, cpu, cuda or cuda:N; cpflow-train defaults to its trainer's (cpu), "
        "a job to auto.",
    )
    worker_torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch CPU threads of a training job (a group's ranks get 1 each if unset).",
    )
    eval_memory_mb: float = Field(
        default=512.0,
        gt=0,
        description="Memory budget (MiB) of one evaluation chunk: validation, final scoring "
        "and plots score as many rows at a time as fit (training.memory.eval_chunk_rows).",
    )
    data_dir: Path | None = Field(
        default=None,
        description="Folder holding the paper's tabular data sets (power/, gas/, hepmass/, "
        "miniboone/, BSDS300/).",
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value not in ("auto", "cpu", "cuda") and not (
            value.startswith("cuda:") and value[5:].isdigit()
        ):
            raise ValueError(f"device {value!r}: write auto, cpu, cuda or cuda:N")
        return value

    def store_location(self) -> str | None:
        """Where the store is: the URL if set, else the directory, else None."""
        if self.store_url:
            return self.store_url
        return None if self.store_dir is None else str(self.store_dir)


class TorchrunSettings(BaseSettings):
    """This process's place in a torchrun group, as torchrun's environment says (no prefix)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    world_size: int = Field(default=1, ge=1, description="Processes in the group (WORLD_SIZE).")
    local_rank: int | None = Field(
        default=None, ge=0, description="This process's rank on its machine (LOCAL_RANK)."
    )


def child_env(**overrides: str) -> dict[str, str]:
    """This process's environment plus ``overrides``: what a child process (a torchrun group)
    is started with."""
    return {**os.environ, **overrides}
