"""The protocol-agnostic inference layer (endpoints -> data plane -> engine): typed requests
in, typed results out; /v1 JSON, /v1 CSV and /v2 routes are thin adapters over it."""

from service.inference.dataplane import DataPlane, TableScoring
from service.inference.types import (
    Calibration,
    LogProbRequest,
    LogProbResult,
    SampleRequest,
    SampleResult,
    Scores,
    TableBatch,
    TableRequest,
    TransportRequest,
    TransportResult,
    calibration_of,
)

__all__ = [
    "Calibration",
    "DataPlane",
    "LogProbRequest",
    "LogProbResult",
    "SampleRequest",
    "SampleResult",
    "Scores",
    "TableBatch",
    "TableRequest",
    "TableScoring",
    "TransportRequest",
    "TransportResult",
    "calibration_of",
]
