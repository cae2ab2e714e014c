"""python -m bench list | run NAME [--set key=value ...] [--out FILE] [--results-dir DIR]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.registry import RESULTS, BenchmarkError, all_benchmarks, get


def _list() -> int:
    benches = all_benchmarks()
    width = max(len(b.name) for b in benches)
    for b in benches:
        print(f"{b.name:<{width}}  {b.description}")
    return 0


def _run(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        names = ", ".join(b.name for b in all_benchmarks())
        print(f"usage: python -m bench run NAME [--set key=value ...] [--out FILE]\n"
              f"benchmarks: {names}", file=sys.stderr)  # fmt: skip
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    bench = get(argv[0])
    parser = argparse.ArgumentParser(
        prog=f"python -m bench run {bench.name}",
        description=bench.help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--set", dest="pairs", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
        help="set options (see below; default: each option's own default); repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, help="also write the report to this file (default: printed only)"
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS,
        help="where side files go (plots, weights; default: %(default)s)",
    )
    args = parser.parse_args(argv[1:])
    from bench.report import write_report
    from bench.runner import run_benchmark

    report = run_benchmark(bench.name, args.pairs, args.results_dir)
    if args.out:
        write_report(report, args.out)
    print(report.to_json())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["list"]:
        return _list()
    if argv[:1] == ["run"]:
        try:
            return _run(argv[1:])
        except BenchmarkError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(__doc__.strip(), file=sys.stderr)
    return 0 if argv[:1] in (["-h"], ["--help"]) else 2


if __name__ == "__main__":
    sys.exit(main())
