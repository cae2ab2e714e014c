"""The benchmark runner (python -m bench): its registry, its one report schema, its errors.

Only the cheapest benchmarks run here, with tiny options; no figure is compared with a
threshold (timings and quality are measured by the benchmarks, never asserted in tests)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

ROOT = Path(__file__).resolve().parents[1]

from bench.__main__ import main
from bench.registry import BenchmarkError, all_benchmarks, get, parse_options
from bench.report import Report, jsonable
from bench.runner import run_benchmark

# The cheapest benchmarks, with options that keep them to seconds.
CHEAP = {
    "toy_density_accuracy": ["num=200", "h=0.5"],
    "store_roundtrip": ["device=cpu"],
}


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _numbers(tree, where: str = "figures"):
    """(path, value) of every number in a JSON tree."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _numbers(value, f"{where}.{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _numbers(value, f"{where}[{i}]")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield where, tree


@pytest.fixture(scope="module")
def cheap_report() -> dict:
    return run_benchmark("store_roundtrip", CHEAP["store_roundtrip"]).model_dump(mode="json")


def test_list_names_every_registered_benchmark(capsys) -> None:
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    listed = [line.split()[0] for line in lines]
    registered = [b.name for b in all_benchmarks()]
    assert listed == registered
    assert len(set(registered)) == len(registered) >= 20
    for line, bench in zip(lines, all_benchmarks(), strict=True):
        assert line.split(None, 1)[1] == bench.description  # a one-line description each


def test_every_benchmark_declares_usable_options() -> None:
    for bench in all_benchmarks():
        assert bench.description and "\n" not in bench.description
        defaults = parse_options(bench, [])
        assert jsonable(defaults) == defaults, bench.name  # JSON-able, as the report needs
        assert all(o.help for o in bench.options), bench.name
        assert bench.help().startswith(f"{bench.name}: ")


@pytest.mark.parametrize("name", sorted(CHEAP))
def test_cheap_benchmark_yields_a_valid_report_with_finite_figures(name: str) -> None:
    report = run_benchmark(name, CHEAP[name])
    again = Report.model_validate_json(report.to_json())  # round trip through strict JSON
    assert again.what == name
    assert again.description == get(name).description
    assert again.commit == "unknown" or len(again.commit) == 40
    assert again.machine.cores >= 1 and again.machine.threads >= 1
    assert again.machine.device == "cpu"
    assert again.wall_s >= 0
    numbers = list(_numbers(again.figures))
    assert numbers, "no figures"
    bad = [(where, v) for where, v in numbers if not math.isfinite(v)]
    assert not bad, bad


def test_options_reach_the_report_typed() -> None:
    report = run_benchmark("toy_density_accuracy", ["num=200", "h=0.5", "seed=4"])
    assert report.options == {"num": 200, "seed": 4, "h": 0.5, "half_width": 5.5}
    assert report.figures["seed"] == 4 and report.figures["grid_spacing"] == 0.5


def test_cli_run_prints_and_writes_the_same_report(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "report.json"
    res = _cli("run", "toy_density_accuracy", "--set", "num=200", "h=0.5", "--out", str(out))
    assert res.returncode == 0, res.stderr
    printed = Report.model_validate_json(res.stdout)
    written = Report.model_validate_json(out.read_text())
    assert printed == written
    assert json.loads(out.read_text())["options"]["num"] == 200


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.pop("figures"),
        lambda r: r.update(figures={}),
        lambda r: r.update(figures={"x": float("nan")}),
        lambda r: r.update(figures={"x": object()}),
        lambda r: r.update(wall_s=-1.0),
        lambda r: r.update(commit="main"),
        lambda r: r.update(started_at="yesterday"),
        lambda r: r.update(unexpected=1),
        lambda r: r["machine"].pop("cpu_model"),
        lambda r: r["machine"].update(cores=0),
        lambda r: r.update(what=""),
    ],
)
def test_schema_rejects_a_malformed_report(cheap_report: dict, change) -> None:
    Report.model_validate(cheap_report)  # the unchanged report is valid
    broken = json.loads(json.dumps(cheap_report))
    change(broken)
    with pytest.raises(ValidationError):
        Report.model_validate(broken)


def test_jsonable_makes_strict_json() -> None:
    tree = jsonable({"a": (1, float("inf")), "b": Path("x/y"), 3: float("nan")})
    assert tree == {"a": [1, "inf"], "b": "x/y", "3": "nan"}
    json.dumps(tree, allow_nan=False)


def test_unknown_benchmark_is_a_clear_error() -> None:
    res = _cli("run", "no_such_bench")
    assert res.returncode != 0
    assert "unknown benchmark 'no_such_bench'" in res.stderr
    for bench in all_benchmarks():
        assert bench.name in res.stderr  # the valid choices are named
    with pytest.raises(BenchmarkError, match="choose from"):
        get("no_such_bench")


def test_unknown_option_is_a_clear_error() -> None:
    res = _cli("run", "toy_density_accuracy", "--set", "nmu=3")
    assert res.returncode != 0
    assert "unknown option 'nmu'" in res.stderr
    for option in get("toy_density_accuracy").options:
        assert option.name in res.stderr


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("num=many", "takes int"),
        ("num", "expected key=value"),
    ],
)
def test_bad_option_values_are_refused(pair: str, message: str) -> None:
    with pytest.raises(BenchmarkError, match=message):
        parse_options(get("toy_density_accuracy"), [pair])


def test_choices_and_types_are_checked() -> None:
    core = get("core")
    assert parse_options(core, ["only=slq,memory", "quick=yes"])["only"] == ["slq", "memory"]
    with pytest.raises(BenchmarkError, match="not one of"):
        parse_options(core, ["only=slq,disk"])
    with pytest.raises(BenchmarkError, match="takes bool"):
        parse_options(core, ["quick=maybe"])
    with pytest.raises(BenchmarkError, match="takes json"):
        parse_options(get("toy_quality"), ["flow=[1, 2]"])


def test_run_help_shows_the_options() -> None:
    res = _cli("run", "core_slq", "--help")
    assert res.returncode == 0
    for option in get("core_slq").options:
        assert f"{option.name}=" in res.stdout
