"""Run one registered benchmark and wrap its figures in a :class:`bench.report.Report`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

from bench.registry import RESULTS, Context, get, parse_options
from bench.report import Report, capture_machine, git_commit, jsonable

__all__ = ["run_benchmark"]


def run_benchmark(name: str, pairs: Sequence[str] = (), results_dir: Path | None = None) -> Report:
    """Run benchmark ``name`` with ``key=value`` option pairs; raises BenchmarkError on a bad
    name or option. An option ``threads`` sets torch's threads before the benchmark starts;
    an option ``device`` is the report's device (else cpu)."""
    import torch

    bench = get(name)
    options = parse_options(bench, pairs)
    if options.get("threads"):
        torch.set_num_threads(int(options["threads"]))
    device = str(options.get("device") or "cpu")
    ctx = Context(results_dir=results_dir or RESULTS)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    figures = bench.fn(SimpleNamespace(**options), ctx)
    wall = time.perf_counter() - t0
    return Report(
        what=bench.name,
        description=bench.description,
        commit=git_commit(),
        machine=capture_machine(device),
        options=jsonable(options),
        started_at=started,
        wall_s=wall,
        figures=jsonable(figures),
    )
