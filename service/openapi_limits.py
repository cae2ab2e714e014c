"""The server's own limits, stated in its OpenAPI document.

The request models carry the static ranges; the limits that come from settings (rows per
request, samples, solver iterations, job processes) are checked by the routes. This module
writes those into the generated document too (``maxItems`` / ``maximum`` on the fields that
the routes check), so a client or a schema fuzzer sees the limits this server enforces.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from service.settings import Settings

__all__ = ["install_limits", "settings_limits"]

# the static bound of the request models (service.schemas); a lower setting takes its place
_MODEL_MAX_ITERATIONS = 100_000


def settings_limits(settings: Settings) -> dict[str, dict[str, dict[str, int]]]:
    """Model schema title -> field -> JSON Schema keywords that ``settings`` imply."""
    rows = {"maxItems": settings.max_batch}
    iterations = {"maximum": min(_MODEL_MAX_ITERATIONS, settings.max_inverse_iterations)}
    samples = {"maximum": settings.max_samples}
    return {
        "LogProbRequest": {"inputs": rows},
        "TransportRequest": {"inputs": rows, "max_iterations": iterations},
        "SampleRequest": {"num_samples": samples, "max_iterations": iterations},
        "InferParameters": {"num_samples": samples, "max_iterations": iterations},
        "Resources": {"processes": {"maximum": settings.max_job_processes}},
    }


def _constrain(field: dict[str, Any], keywords: dict[str, int]) -> None:
    """Add ``keywords`` to a field schema (to each non-null branch of an optional field)."""
    branches = field.get("anyOf")
    for node in branches if branches is not None else [field]:
        if node.get("type") != "null":
            node.update(keywords)


def _apply(node: Any, limits: dict[str, dict[str, dict[str, int]]]) -> None:
    if isinstance(node, dict):
        fields = limits.get(node.get("title", "")) if "properties" in node else None
        for name, keywords in (fields or {}).items():
            _constrain(node["properties"][name], keywords)
        for value in node.values():
            _apply(value, limits)
    elif isinstance(node, list):
        for value in node:
            _apply(value, limits)


def install_limits(app: FastAPI, settings: Settings) -> None:
    """Make ``app.openapi()`` state the limits of ``settings`` (once, when first built)."""
    build = app.openapi
    limits = settings_limits(settings)

    def openapi() -> dict[str, Any]:
        first = app.openapi_schema is None
        schema = build()
        if first:
            _apply(schema, limits)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
