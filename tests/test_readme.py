"""The README stays true: its two commands exist, its configuration table names every
service setting, and its endpoint index lists only routes the app serves and every route of
the HTTP contract in DESIGN.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

# The HTTP contract of DESIGN.md (v1), as (method, path template).
CONTRACT = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{}"),
    ("POST", "/v1/models/{}/log_prob"),
    ("POST", "/v1/models/{}/sample"),
    ("POST", "/v1/models/{}/transport"),
    ("POST", "/v1/models/{}/versions/{}/log_prob"),
    ("POST", "/v1/models/{}/versions/{}/sample"),
    ("POST", "/v1/models/{}/versions/{}/transport"),
    ("POST", "/v1/datasets"),
    ("GET", "/v1/datasets"),
    ("GET", "/v1/datasets/{}"),
    ("DELETE", "/v1/datasets/{}"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{}"),
    ("DELETE", "/v1/jobs/{}"),
}


def _template(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def _readme_index() -> set[tuple[str, str]]:
    rows = re.findall(r"^\| (GET|POST|DELETE|PUT|PATCH) \| `([^`]+)` \|", README, re.MULTILINE)
    return {(method, _template(path)) for method, path in rows}


def _readme_settings() -> dict[str, str]:
    """Variable name -> the default column of its row in the configuration table."""
    table = {}
    for names, default in re.findall(r"^\| (`CPFLOW_[^|]+)\| ([^|]+) \|", README, re.MULTILINE):
        for name in re.findall(r"`(CPFLOW_[A-Z0-9_]+)`", names):
            table[name] = default.strip()
    return table


def test_readme_gives_the_two_commands_and_they_exist() -> None:
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^bash (\S+)", quick, re.MULTILINE)
    assert commands[:2] == ["scripts/up.sh", "scripts/test.sh"]
    for script in commands:
        assert (ROOT / script).is_file()


def test_endpoint_index_covers_the_http_contract() -> None:
    index = _readme_index()
    assert CONTRACT <= index, f"missing from README: {sorted(CONTRACT - index)}"


def test_every_contract_route_has_a_curl_example() -> None:
    curls = README.split("## Try it", 1)[1].split("\n## ", 1)[0]
    for method, path in CONTRACT:
        pattern = re.escape(path).replace(r"\{\}", r"[^/\s\"']+") + r"(?=[\s\"'|]|$)"
        hits = [m for m in re.finditer(r"\$API" + pattern, curls)]
        assert hits, f"no curl example for {method} {path}"
        lines = [curls[curls.rfind("\n", 0, m.start()) + 1 : m.start()] for m in hits]
        if method == "GET":
            assert any("-X" not in ln for ln in lines), f"no GET example for {path}"
        else:
            assert any(f"-X {method}" in ln for ln in lines), f"no {method} example for {path}"


def test_endpoint_index_lists_only_routes_the_app_serves(tmp_path: Path) -> None:
    try:
        from service.app import create_app
        from service.settings import Settings
    except ModuleNotFoundError as exc:
        pytest.skip(f"service app not built yet ({exc.name})")
    app = create_app(Settings(store_dir=tmp_path / "store"))
    # The OpenAPI document lists every documented route (FastAPI includes routers lazily, so
    # app.routes does not show them).
    served = {
        (method.upper(), _template(path))
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    extra = _readme_index() - served
    assert not extra, f"README lists routes the app does not serve: {sorted(extra)}"


def _settings_classes() -> list[Any]:
    """Every settings class the table documents: the service's, the job queue's and the
    training processes'."""
    try:
        from service.settings import JobSettings, Settings
        from training.settings import TrainingSettings
    except ModuleNotFoundError as exc:
        pytest.skip(f"settings not built yet ({exc.name})")
    return [Settings, JobSettings, TrainingSettings]


def test_configuration_table_names_every_setting() -> None:
    expected = {
        cls.model_config.get("env_prefix", "CPFLOW_") + name.upper()
        for cls in _settings_classes()
        for name in cls.model_fields
    }
    documented = _readme_settings()
    missing = sorted(expected - set(documented))
    assert not missing, f"add rows for {missing} to the Configuration table in README.md"
    unknown = set(documented) - expected - {"CPFLOW_HOST", "CPFLOW_PORT"}
    assert not unknown, f"README documents settings that do not exist: {sorted(unknown)}"


def test_configuration_table_gives_the_real_defaults() -> None:
    documented = _readme_settings()
    checked = 0
    fields = [item for cls in _settings_classes() for item in cls.model_fields.items()]
    for name, field in fields:
        default = field.default
        if default is None or isinstance(default, tuple | list | dict):
            continue  # computed or empty defaults are described in words
        cell = documented["CPFLOW_" + name.upper()]
        shown = re.match(r"`([^`]+)`", cell)
        assert shown, f"CPFLOW_{name.upper()}: default column {cell!r} has no `value`"
        if isinstance(default, Path):
            assert Path(shown.group(1)) == default, name
        elif isinstance(default, bool | int | float):
            assert float(shown.group(1)) == float(default), name
        else:
            assert shown.group(1) == str(default), name
        checked += 1
    assert checked >= 10


def test_presets_named_in_the_readme_exist() -> None:
    try:
        from training.presets import PRESETS
    except ModuleNotFoundError as exc:
        pytest.skip(f"training presets not built yet ({exc.name})")
    from training.recipes import AUTO

    known = {*PRESETS, AUTO}  # auto: the recipe chosen from the data
    named = set(re.findall(r"--preset (\w+)", README))
    assert "demo" in named
    assert named <= known, f"unknown presets in README: {sorted(named - known)}"
