"""The interface every model-store backend implements: the local folder store
(:class:`~model_store.store.ModelStore`) and the object store
(:class:`~model_store.object_store.ObjectModelStore`). The service, the training CLI and the
job function hold a store by this type, so either backend can stand behind them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from cpflow import CPFlow

    from .datasets import DatasetStore
    from .store import LoadedModel, PublishedVersion

__all__ = ["StoreBackend"]


class StoreBackend(Protocol):
    """Versioned models under names, their uploaded data sets, and the files beside them."""

    root: Path
    """The local folder: the store itself, or an object store's digest-checked cache."""
    datasets: DatasetStore
    """Uploaded training data kept beside the models."""

    def names(self) -> list[str]:
        """Every model name with at least one committed version."""
        ...

    def versions(self, name: str) -> list[int]:
        """Committed version numbers of ``name``, ascending."""
        ...

    def resolve(self, name: str, version: int | str = "latest") -> int:
        """The number a version label ("latest", "3", 3) stands for; ModelNotFound if none."""
        ...

    def version_path(self, name: str, version: int | str = "latest") -> Path:
        """The local folder holding a version's files."""
        ...

    def manifest(self, name: str, version: int | str = "latest") -> dict[str, Any]:
        """A version's manifest (digest-checked)."""
        ...

    def list_models(self) -> list[dict[str, Any]]:
        """One summary per model name (its latest version)."""
        ...

    def verify(self, name: str, version: int | str = "latest") -> dict[str, Any]:
        """Check the manifest and every file digest of a version; return the manifest."""
        ...

    def load(
        self,
        name: str,
        version: int | str = "latest",
        device: str | torch.device = "cpu",
        *,
        exports: bool = True,
    ) -> LoadedModel:
        """Verify a version and rebuild its flow on ``device`` (with its ONNX exports unless
        ``exports`` is False)."""
        ...

    def plot_path(self, name: str, version: int | str, filename: str) -> Path:
        """Local path of a stored plot; ModelNotFound if the version has none by that name."""
        ...

    def publish(
        self,
        name: str,
        flow: CPFlow,
        *,
        training: dict[str, Any] | None = None,
        plots: dict[str, bytes] | None = None,
        export_onnx: bool = False,
        tenant: str | None = None,
    ) -> PublishedVersion:
        """Write ``flow`` as the next version of ``name``, atomically (for ``tenant``, or
        shared)."""
        ...

    def owner(self, name: str) -> str | None:
        """The tenant whose versions ``name`` holds; None when shared."""
        ...

    def delete(self, name: str, version: int | str) -> None:
        """Remove one version."""
        ...

    def delete_model(self, name: str) -> list[int]:
        """Remove every version of ``name``, oldest first; return their numbers."""
        ...

    def cleanup(self, name: str | None = None) -> list[str]:
        """Remove what interrupted publishers left behind; return what was removed."""
        ...
