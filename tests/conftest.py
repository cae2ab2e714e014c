"""Shared pytest configuration: deterministic seeds for every test."""

from __future__ import annotations

import pytest
import torch

# redis_conn and queue_name, for the suites that use the real Redis (jobs, chaos)
pytest_plugins = ["tests.helpers.queue_fixtures"]


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)
