"""The reference pages stay true: the endpoint index of docs/http-api.md lists only routes the
app serves and every route of the HTTP contract in DESIGN.md, each with a curl example; the
table of docs/configuration.md names every setting with its real default. (The error table of
docs/http-api.md is checked against the catalogue by tests/service/test_error_codes.py.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTTP_API = (ROOT / "docs" / "http-api.md").read_text()
CONFIG = (ROOT / "docs" / "configuration.md").read_text()

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


def _index() -> set[tuple[str, str]]:
    rows = re.findall(r"^\| (GET|POST|DELETE|PUT|PATCH) \| `([^`]+)` \|", HTTP_API, re.MULTILINE)
    return {(method, _template(path)) for method, path in rows}


def _settings_table() -> dict[str, str]:
    """Variable name -> the default column of its row in the configuration table."""
    table = {}
    for names, default in re.findall(r"^\| (`CPFLOW_[^|]+)\| ([^|]+) \|", CONFIG, re.MULTILINE):
        for name in re.findall(r"`(CPFLOW_[A-Z0-9_]+)`", names):
            table[name] = default.strip()
    return table


def test_endpoint_index_covers_the_http_contract() -> None:
    index = _index()
    assert CONTRACT <= index, f"missing from docs/http-api.md: {sorted(CONTRACT - index)}"


def test_every_contract_route_has_a_curl_example() -> None:
    curls = HTTP_API.split("## Try it", 1)[1].split("\n## ", 1)[0]
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
    extra = _index() - served
    assert not extra, f"docs/http-api.md lists routes the app does not serve: {sorted(extra)}"


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
    documented = _settings_table()
    missing = sorted(expected - set(documented))
    assert not missing, f"add rows for {missing} to the table in docs/configuration.md"
    unknown = set(documented) - expected - {"CPFLOW_HOST", "CPFLOW_PORT"}
    assert not unknown, (
        f"docs/configuration.md documents settings that do not exist: {sorted(unknown)}"
    )


def test_configuration_table_gives_the_real_defaults() -> None:
    documented = _settings_table()
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
