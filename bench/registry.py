"""The registry of named benchmarks and their typed ``key=value`` options.

A benchmark is a function ``fn(opts, ctx) -> figures`` registered with::

    @benchmark("core_slq", "SLQ log-det against the exact one", options=[
        Option("quick", "bool", False, "fewer repeats and a smaller batch"),
    ])
    def core_slq(opts, ctx): ...

``opts`` is a :class:`types.SimpleNamespace` of the parsed options, ``ctx`` a :class:`Context`
(where side files such as plots go, and a progress logger). ``figures`` is a JSON-able dict:
what the benchmark measured. The runner (:mod:`bench.runner`) wraps it in a report.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

__all__ = [
    "Benchmark",
    "BenchmarkError",
    "Context",
    "Option",
    "all_benchmarks",
    "benchmark",
    "get",
    "parse_options",
]

SUITES = (
    "core",
    "toys",
    "tabular",
    "images",
    "conditional",
    "service",
    "distributed",
    "storage",
    "console",
    "tables",
    "memory",
)
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


class BenchmarkError(ValueError):
    """A user error: unknown benchmark, unknown option, a value of the wrong type."""


def _bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {raw!r} (true/false)")


def _json_object(raw: str) -> dict:
    value = json.loads(raw) if raw.strip() else {}
    if not isinstance(value, dict):
        raise TypeError("not a JSON object")
    return value


def _list(item: Callable[[str], Any]) -> Callable[[str], list]:
    return lambda raw: [item(v.strip()) for v in raw.split(",") if v.strip()]


# type name -> parser of the text after "key="
PARSERS: dict[str, Callable[[str], Any]] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": _bool,
    "ints": _list(int),
    "floats": _list(float),
    "strs": _list(str),
    "json": _json_object,
}


@dataclass(frozen=True)
class Option:
    """One typed option; ``default`` None means "not set" (the benchmark picks)."""

    name: str
    type: str
    default: Any
    help: str
    choices: tuple | None = None

    def __post_init__(self) -> None:
        if self.type not in PARSERS:
            raise TypeError(f"option {self.name}: unknown type {self.type!r}")

    def parse(self, raw: str, bench: str) -> Any:
        try:
            value = PARSERS[self.type](raw)
        except (TypeError, ValueError) as exc:
            raise BenchmarkError(
                f"option {self.name!r} of {bench} takes {self.type}, got {raw!r} ({exc})"
            ) from None
        items = value if isinstance(value, list) else [value]
        if self.choices is not None and any(v not in self.choices for v in items):
            raise BenchmarkError(
                f"option {self.name!r} of {bench}: {raw!r} is not one of "
                + ", ".join(map(str, self.choices))
            )
        return value

    def describe(self) -> str:
        default = "unset" if self.default is None else json.dumps(self.default)
        text = f"{self.name}={self.type} (default {default})"
        if self.choices:
            text += " one of " + ", ".join(map(str, self.choices))
        return f"{text}: {self.help}"


@dataclass
class Context:
    """What a benchmark may use besides its options."""

    results_dir: Path = RESULTS

    def log(self, *parts: Any) -> None:
        """A progress line on stderr (stdout carries only the report)."""
        text = " ".join(p if isinstance(p, str) else json.dumps(p) for p in parts)
        print(text, file=sys.stderr, flush=True)

    def results(self) -> Path:
        """The folder for side files (plots, weights, per-run JSON), created on demand."""
        self.results_dir.mkdir(parents=True, exist_ok=True)
        return self.results_dir

    def relative(self, path: Path) -> str:
        """``path`` relative to the repository when it lies inside it, else as given."""
        try:
            return str(path.resolve().relative_to(REPO))
        except ValueError:
            return str(path)


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    fn: Callable[[SimpleNamespace, Context], dict]
    options: tuple[Option, ...] = field(default_factory=tuple)
    module: str = ""

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options}

    def help(self) -> str:
        lines = [f"{self.name}: {self.description}", ""]
        if self.fn.__doc__:
            lines += [inspect.cleandoc(self.fn.__doc__), ""]
        lines += ["options (--set key=value):"]
        lines += [f"  {o.describe()}" for o in self.options] or ["  (none)"]
        return "\n".join(lines)


_REGISTRY: dict[str, Benchmark] = {}


def benchmark(
    name: str, description: str, options: Sequence[Option] = ()
) -> Callable[[Callable], Callable]:
    """Register ``fn`` under ``name`` (a name may be registered once)."""

    def register(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"benchmark {name!r} registered twice")
        names = [o.name for o in options]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark {name!r} declares an option twice")
        _REGISTRY[name] = Benchmark(name, description, fn, tuple(options), fn.__module__)
        return fn

    return register


def _load_suites() -> None:
    for suite in SUITES:
        importlib.import_module(f"bench.suites.{suite}")


def all_benchmarks() -> list[Benchmark]:
    """Every registered benchmark, in registration order (suite by suite)."""
    _load_suites()
    return list(_REGISTRY.values())


def get(name: str) -> Benchmark:
    _load_suites()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BenchmarkError(
            f"unknown benchmark {name!r}; choose from: {', '.join(_REGISTRY)}"
        ) from None


def parse_options(bench: Benchmark, pairs: Sequence[str]) -> dict[str, Any]:
    """The benchmark's defaults updated by ``key=value`` pairs (later pairs win)."""
    values = bench.defaults()
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise BenchmarkError(f"expected key=value, got {pair!r}")
        option = bench.option(key)
        if option is None:
            valid = ", ".join(o.name for o in bench.options) or "(none)"
            raise BenchmarkError(
                f"unknown option {key!r} for {bench.name}; valid options: {valid}"
            )
        values[key] = option.parse(raw, bench.name)
    return values
