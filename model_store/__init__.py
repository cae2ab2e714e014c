"""Versioned, verifiable, pickle-free storage of trained flows and their training data."""

from __future__ import annotations

from .datasets import DatasetRecord, DatasetStore, array_sha256
from .errors import (
    CorruptDataset,
    CorruptModel,
    DatasetNotFound,
    InvalidDataset,
    InvalidName,
    ModelNotFound,
    StoreError,
)
from .names import validate_name
from .store import LoadedModel, ModelStore, PublishedVersion

__all__ = [
    "CorruptDataset",
    "CorruptModel",
    "DatasetNotFound",
    "DatasetRecord",
    "DatasetStore",
    "InvalidDataset",
    "InvalidName",
    "LoadedModel",
    "ModelNotFound",
    "ModelStore",
    "PublishedVersion",
    "StoreError",
    "array_sha256",
    "validate_name",
]
