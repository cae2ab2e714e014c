"""Versioned, verifiable, pickle-free storage of trained flows and their training data."""

from __future__ import annotations

from .backend import StoreBackend
from .datasets import DatasetRecord, DatasetStore, array_sha256
from .errors import (
    CorruptDataset,
    CorruptModel,
    DatasetNotFound,
    InvalidDataset,
    InvalidName,
    ModelNameTaken,
    ModelNotFound,
    PlotNotFound,
    StoreError,
)
from .names import validate_name
from .object_store import ObjectModelStore, StoreUnavailable, open_store
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
    "ModelNameTaken",
    "ModelNotFound",
    "ModelStore",
    "ObjectModelStore",
    "PlotNotFound",
    "PublishedVersion",
    "StoreBackend",
    "StoreError",
    "StoreUnavailable",
    "array_sha256",
    "open_store",
    "validate_name",
]
