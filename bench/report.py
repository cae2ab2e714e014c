"""The one report schema every benchmark emits, and what it records about the run.

    {"what": NAME, "description": ..., "commit": git sha or "unknown",
     "machine": {"cpu_model", "cores", "torch", "threads", "device", "gpu", "python"},
     "options": {...}, "started_at": ISO 8601 time, "wall_s": seconds, "figures": {...}}

``figures`` is a JSON tree (objects with string keys, arrays, strings, finite numbers, booleans,
null): :func:`jsonable` turns tuples, numpy scalars and paths into JSON and non-finite floats
into the strings "nan", "inf" and "-inf", so a report always parses as strict JSON.
"""

from __future__ import annotations

import math
import os
import platform
import re
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bench.registry import REPO

__all__ = ["Machine", "Report", "capture_machine", "git_commit", "jsonable", "write_report"]

_SHA = re.compile(r"^[0-9a-f]{40}$")


class Machine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpu_model: str
    cores: int = Field(ge=1)
    torch: str
    threads: int = Field(ge=1)
    device: str
    gpu: str | None = None
    python: str


def _json_problem(value: Any, where: str) -> str | None:
    """Where ``value`` stops being a strict JSON tree, or None."""
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where}: non-finite number {value}"
    if isinstance(value, list):
        items = ((f"{where}[{i}]", item) for i, item in enumerate(value))
    elif isinstance(value, dict):
        bad = next((k for k in value if not isinstance(k, str)), None)
        if bad is not None:
            return f"{where}: key {bad!r} is not a string"
        items = ((f"{where}.{k}", item) for k, item in value.items())
    else:
        return f"{where}: {type(value).__name__} is not JSON"
    return next((p for w, item in items if (p := _json_problem(item, w))), None)


class Report(BaseModel):
    """One benchmark run."""

    model_config = ConfigDict(extra="forbid")

    what: str = Field(min_length=1)
    description: str
    commit: str
    machine: Machine
    options: dict[str, Any]
    started_at: datetime
    wall_s: float = Field(ge=0)
    figures: dict[str, Any] = Field(min_length=1)

    @field_validator("commit")
    @classmethod
    def _commit(cls, value: str) -> str:
        if value != "unknown" and not _SHA.match(value):
            raise ValueError("commit must be a 40-hex git sha or 'unknown'")
        return value

    @field_validator("options", "figures")
    @classmethod
    def _json_tree(cls, value: dict[str, Any], info) -> dict[str, Any]:
        problem = _json_problem(value, info.field_name)
        if problem:
            raise ValueError(problem)
        return value

    def to_json(self) -> str:
        return self.model_dump_json(indent=1)


def jsonable(value: Any) -> Any:
    """``value`` as a strict JSON tree (see the module docstring)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()  # numpy / torch scalars
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(f"{type(value).__name__} is not JSON-able")


def git_commit() -> str:
    """The checked-out commit of this repository, or "unknown" (no git, not a checkout)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and _SHA.match(sha) else "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def capture_machine(device: str = "cpu") -> Machine:
    """The machine as the benchmark saw it (threads: torch's intra-op threads now)."""
    import torch

    gpu = None
    if device.startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    return Machine(
        cpu_model=_cpu_model(),
        cores=os.cpu_count() or 1,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        device=device,
        gpu=gpu,
        python=platform.python_version(),
    )


def write_report(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.to_json() + "\n")
