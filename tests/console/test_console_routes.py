"""The /ui routes without a browser: pages and static files are served by the app, state the
API's limits, stay out of the /v1 OpenAPI schema, and need no key (the data behind them does)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(
        store_dir=tmp_path_factory.mktemp("ui") / "store",
        api_keys=("k",),
        max_csv_rows=1234,
        max_samples=77,
        log_level="WARNING",
    )
    with TestClient(create_app(settings)) as c:
        yield c


def test_the_root_address_leads_to_the_console(client):
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui"
    assert "/" not in client.get("/openapi.json").json()["paths"]


def test_ui_is_not_in_the_api_schema(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/ui")]
    assert "/v1/models/{name}/log_prob.csv" in paths


@pytest.mark.parametrize(
    ("path", "page"),
    [
        ("/ui", "models"),
        ("/ui/models/demo", "model"),
        ("/ui/models/demo?version=3", "model"),
        ("/ui/jobs", "jobs"),
        ("/ui/jobs/some-id", "job"),
        ("/ui/datasets", "datasets"),
    ],
)
def test_pages_render_without_a_key(client, path, page):
    r = client.get(path)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert f'data-page="{page}"' in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert '<script type="module" src="/ui/static/console.js">' in r.text


def test_pages_state_the_limits_and_escape_names(client):
    model = client.get("/ui/models/demo?version=3").text
    assert "At most\n      1,234 rows and 256 MiB per file" in model and 'max="77"' in model
    assert 'data-name="demo" data-version="3"' in model
    job = client.get("/ui/jobs/%3Cscript%3E").text
    assert "<script>" not in job and "&lt;script&gt;" in job
    jobs = client.get("/ui/jobs").text
    assert '<option value="builtin:two_moons">' in jobs


def test_static_files_and_bad_version(client):
    js = client.get("/ui/static/api.js")
    assert js.status_code == 200 and "sessionStorage" in js.text
    # ES modules load only with a JavaScript media type.
    assert "javascript" in client.get("/ui/static/console.js").headers["content-type"]
    assert client.get("/ui/static/console.css").status_code == 200
    assert client.get("/ui/static/nope.js").status_code == 404
    assert client.get("/ui/", follow_redirects=False).headers["location"].endswith("/ui")
    bad = client.get("/ui/models/demo?version=0")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"
    assert client.get("/v1/models").status_code == 401  # the data stay behind the key


def test_console_can_be_turned_off(tmp_path):
    settings = Settings(store_dir=tmp_path / "store", console=False, log_level="WARNING")
    with TestClient(create_app(settings)) as c:
        assert c.get("/ui").status_code == 404
        assert c.get("/ui/static/console.js").status_code == 404
        assert c.get("/v1/models").status_code == 200
        root = c.get("/", follow_redirects=False)  # no console: the root leads to the API docs
        assert root.status_code == 307 and root.headers["location"] == "/docs"
