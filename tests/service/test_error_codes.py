"""The error-code catalogue (service.error_codes) is the one list of codes: the table of
docs/http-api.md is exactly it, every code the service raises comes from it (no string
literal at a raise site), and each error answers with its catalogued status."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from service.error_codes import ErrorCode, code_for_status, markdown_table, parse_code
from service.errors import ApiError

ROOT = Path(__file__).resolve().parents[2]
HTTP_API = (ROOT / "docs" / "http-api.md").read_text()
# Callables whose argument names an error code: ApiError(code, message), send_error(scope, send,
# status, code, message) and error_content(path, code, message).
_CODE_ARGUMENT = {"ApiError": 0, "send_error": 3, "error_content": 1, "error_payload": 0}


def _readme_rows() -> dict[str, tuple[int, str]]:
    section = HTTP_API.split("\n## Errors\n", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \| (.+) \|$", section, re.MULTILINE)
    return {code: (int(status), meaning) for code, status, meaning in rows}


def test_docs_table_lists_every_code_and_no_other():
    table = _readme_rows()
    catalogue = {c.value: (c.status, c.meaning) for c in ErrorCode}
    missing, unknown = sorted(set(catalogue) - set(table)), sorted(set(table) - set(catalogue))
    assert not missing, f"codes missing from the error table of docs/http-api.md: {missing}"
    assert not unknown, f"docs/http-api.md lists codes that do not exist: {unknown}"
    assert table == catalogue, (
        "the error table of docs/http-api.md is stale: python -m service.error_codes"
    )
    assert markdown_table() in HTTP_API


def _code_arguments(path: Path) -> list[tuple[int, ast.expr]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        index = _CODE_ARGUMENT.get(name or "")
        if index is not None and len(node.args) > index:
            found.append((node.lineno, node.args[index]))
    return found


def test_every_raise_site_names_a_catalogued_member():
    literals = []
    for path in sorted((ROOT / "service").rglob("*.py")):
        for line, arg in _code_arguments(path):
            if isinstance(arg, ast.Constant):
                literals.append(f"{path.relative_to(ROOT)}:{line}: {arg.value!r}")
            elif isinstance(arg, ast.Attribute) and getattr(arg.value, "id", "") == "ErrorCode":
                assert arg.attr in ErrorCode.__members__, f"{path}:{line}: ErrorCode.{arg.attr}"
    assert not literals, "error codes written as strings (use ErrorCode):\n" + "\n".join(literals)


def test_codes_are_unique_snake_case_with_an_error_status():
    values = [c.value for c in ErrorCode]
    assert len(values) == len(set(values))
    for code in ErrorCode:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", code.value), code
        assert 400 <= code.status < 600 and code.meaning, code
        assert parse_code(code.value) is code
    with pytest.raises(KeyError):
        parse_code("no_such_code")


def test_api_error_takes_its_status_from_the_catalogue():
    err = ApiError(ErrorCode.TOO_MANY_ROWS, "split the batch")
    assert (err.status, err.code, err.message) == (422, "too_many_rows", "split the batch")
    assert ApiError(ErrorCode.DATASET_NOT_FOUND, "x", status=422).status == 422
    assert code_for_status(404) is ErrorCode.NOT_FOUND
    assert code_for_status(418) is ErrorCode.BAD_REQUEST
    assert code_for_status(502) is ErrorCode.INTERNAL_ERROR


def test_context_error_codes_of_the_library_are_catalogued():
    """cpflow.check_context's codes travel to the client unchanged: each must be in the list."""
    source = (ROOT / "cpflow" / "context.py").read_text()
    codes = set(re.findall(r'ContextError\(\s*"([a-z_]+)"', source))
    assert codes and all(parse_code(c) for c in codes), codes
