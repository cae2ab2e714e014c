"""Fixtures for the model-store tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def store(tmp_path):
    """An empty store under tmp_path (the root folder is created by the first publish)."""
    from model_store import ModelStore

    return ModelStore(tmp_path / "store")
