"""/docs and /redoc render in a real Chromium with the network unreachable: every request that
does not go to the service is aborted, so a page that loads Swagger UI or ReDoc from a CDN
stays blank and fails here."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.helpers.service import run_server


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("apidocs")
    env = {"CPFLOW_STORE_DIR": str(tmp / "store"), "CPFLOW_CONSOLE": "1"}
    with run_server(env, log_path=tmp / "server.log") as url:
        yield url


def _offline_page(browser, url: str):
    """A tab whose only reachable host is the service; returns (page, blocked URLs, errors)."""
    context = browser.new_context()
    host = urlsplit(url).netloc
    blocked: list[str] = []
    errors: list[str] = []

    def route(r):
        if urlsplit(r.request.url).netloc == host:
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort("internetdisconnected")

    context.route("**/*", route)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return context, page, blocked, errors


def test_swagger_ui_renders_offline(browser, service_url):
    context, page, blocked, errors = _offline_page(browser, service_url)
    try:
        page.goto(service_url + "/docs")
        # Swagger UI drew the operations of the OpenAPI document it fetched from the service.
        page.wait_for_selector(".opblock-summary-path", state="attached")
        paths = page.locator(".opblock-summary-path").all_text_contents()
        assert any("/v1/models/{name}/log_prob" in p for p in paths), paths[:5]
        assert page.locator(".swagger-ui .info .title").first.inner_text().startswith("cpflow")
    finally:
        context.close()
    assert not blocked, f"/docs asked the network for {blocked}"
    assert not errors, errors


def test_redoc_renders_offline(browser, service_url):
    context, page, blocked, errors = _offline_page(browser, service_url)
    try:
        page.goto(service_url + "/redoc")
        # ReDoc drew the document: its title and one heading per operation.
        # (a selector wait: a string predicate needs eval, which the page's CSP forbids)
        page.locator("h2").nth(10).wait_for(state="attached")
        assert "cpflow" in page.locator("h1").first.inner_text()
        assert "/v1/models/{name}/log_prob" in page.locator("body").inner_text()
    finally:
        context.close()
    assert not blocked, f"/redoc asked the network for {blocked}"
    assert not errors, errors
