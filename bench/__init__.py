"""Benchmarks of cpflow: one runner (``python -m bench``), a registry of named benchmarks and
one JSON report schema.

    python -m bench list
    python -m bench run NAME [--set key=value ...] [--out FILE] [--results-dir DIR]
    python -m bench run NAME --help

The benchmarks live in :mod:`bench.suites` (grouped by topic); importing this package stays
light (no torch, no pydantic) so that child processes started by a benchmark start fast.
"""
