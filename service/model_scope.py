"""Which models a tenant sees: every one (CPFLOW_MODEL_SCOPE=shared), or the shared ones and
its own (``tenant``).

A version a tenant's training job publishes under ``tenant`` scope names that tenant in its
manifest (model_store: ``tenant``); versions without one (cpflow-train, versions published
before) are shared. A name has one owner, so visibility is decided per name
(:meth:`service.engine.InferenceEngine.owner`). Another tenant's model answers exactly as a
missing one: the same 404 ``model_not_found`` with the same message, on every route that
names it (describe, plots, verify, delete, score under /v1 and /v2), and it is left out of
the listing.
"""

from __future__ import annotations

from typing import Any

from model_store import ModelNotFound
from service.engine import InferenceEngine
from service.settings import Settings

__all__ = ["check_visible", "hidden", "visible"]


def visible(owner: str | None, tenant: str, settings: Settings) -> bool:
    """Whether a model of ``owner`` (None: shared) is ``tenant``'s to see."""
    return settings.model_scope == "shared" or owner is None or owner == tenant


def hidden(name: str, version: int | None) -> ModelNotFound:
    """What the store answers for a model that does not exist (the same words, no hint)."""
    if version is None:
        return ModelNotFound(name, detail="it has no published version")
    return ModelNotFound(name, version)


async def check_visible(
    engine: InferenceEngine, settings: Settings, tenant: str, name: str, version: int | None
) -> None:
    """ModelNotFound, as for a missing model, unless ``tenant`` may see ``name``."""
    if settings.model_scope == "shared":
        return
    try:
        owner = await engine.owner(name)
    except ModelNotFound:
        raise hidden(name, version) from None  # missing: in the very words used for hidden
    if not visible(owner, tenant, settings):
        raise hidden(name, version)


def visible_rows(
    rows: list[dict[str, Any]], tenant: str, settings: Settings
) -> list[dict[str, Any]]:
    """The catalogue rows (service.model_health.catalogue) ``tenant`` may see."""
    return [row for row in rows if visible(row.get("tenant"), tenant, settings)]
