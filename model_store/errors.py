"""Errors raised by the model store; every message says which model, version and file."""

from __future__ import annotations

__all__ = [
    "CorruptDataset",
    "CorruptModel",
    "DatasetNotFound",
    "InvalidDataset",
    "InvalidName",
    "ModelNameTaken",
    "ModelNotFound",
    "PlotNotFound",
    "StoreError",
]


class StoreError(Exception):
    """Base class of every model-store error."""


class InvalidName(StoreError, ValueError):
    """A model, plot or file name that is not allowed (path traversal, hidden, bad characters)."""


class ModelNotFound(StoreError, LookupError):
    """No such model name, or no such version of it."""

    def __init__(self, name: str, version: int | str | None = None, detail: str = "") -> None:
        self.name = name
        self.version = version
        if version is None:
            message = f"model {name!r} not found"
        else:
            message = f"model {name!r} version {version} not found"
        super().__init__(f"{message}{': ' + detail if detail else ''}")


class ModelNameTaken(StoreError):
    """A publish under a name whose versions belong to another owner (another tenant, or
    shared when the publisher is a tenant, and the reverse): a name has one owner."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"the model name {name!r} is taken: its versions belong to another owner (another "
            "tenant, or the shared models); publish under another name"
        )


class PlotNotFound(ModelNotFound):
    """The model version exists but has no plot of this name."""

    def __init__(
        self, name: str, version: int, filename: str, plots: list[str], hint: str
    ) -> None:
        listed = ", ".join(sorted(plots)) or "none"
        super().__init__(name, version, f"it has no plot {filename!r}{hint}; its plots: {listed}")
        self.filename = filename


class CorruptModel(StoreError):
    """A stored file is missing, truncated or altered: the version must not be served."""

    def __init__(self, name: str, version: int, file: str, reason: str) -> None:
        self.name = name
        self.version = version
        self.file = file
        self.reason = reason
        super().__init__(
            f"model {name!r} version {version}: file {file!r} {reason}; "
            "the stored version is damaged: republish it or delete it"
        )


class DatasetNotFound(StoreError, LookupError):
    """No stored data set with this id."""


class InvalidDataset(StoreError, ValueError):
    """An array that cannot be stored as a training data set (shape, dtype, non-finite values)."""


class CorruptDataset(StoreError):
    """A stored data set whose bytes no longer match its sha256."""
