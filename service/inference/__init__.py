"""The protocol-agnostic inference layer (endpoints -> data plane -> engine): typed requests
in, typed results out; /v1 JSON, /v1 CSV and /v2 routes are thin adapters over it."""

from service.inference.dataplane import DataPlane, TableScoring
from service.inference.types import (
    LogProbRequest,
    LogProbResult,
    SampleRequest,
    SampleResult,
    TableBatch,
    TableRequest,
    TransportRequest,
    TransportResult,
)

__all__ = [
    "DataPlane",
    "LogProbRequest",
    "LogProbResult",
    "SampleRequest",
    "SampleResult",
    "TableBatch",
    "TableRequest",
    "TableScoring",
    "TransportRequest",
    "TransportResult",
]
