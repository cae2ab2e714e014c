"""Fixtures for the core library tests: small random (non-identity) flows."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.flows import random_flow


@pytest.fixture(autouse=True)
def _one_thread():
    """Core tests use small tensors: one intra-op thread avoids oversubscription on a shared
    2-core machine (10x slower otherwise under load). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_flow():
    return random_flow
